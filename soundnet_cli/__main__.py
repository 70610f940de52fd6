from soundnet_cli.cli.main import main

main()

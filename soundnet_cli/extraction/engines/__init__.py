"""Engines that run the extraction elsewhere than in this process's threads (the local engine
is ``extraction/engine.py``): ``ray`` (Ray Data). Each is imported only when asked for."""

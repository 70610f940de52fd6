import pickle

import numpy as np
import pytest
import torch

from soundnet_cli.errors import WeightsError
from soundnet_cli.weights import sound8

from ..fakes import NAMES_SOURCE, OBJECTS, SCENES, fake_params, npy_bytes


def test_reads_the_release_layout_and_converts_kernels():
    params = fake_params()
    state = sound8.to_state_dict(sound8.read_sound8(npy_bytes(params)))
    w = params["conv2"]["weights"]  # (kernel, 1, in, out)
    converted = state["blocks.conv2.conv.weight"]  # (out, in, kernel)
    assert converted.shape == (w.shape[3], w.shape[2], w.shape[0])
    assert converted[1, 2, 0].item() == pytest.approx(float(w[0, 0, 2, 1]))
    assert torch.equal(
        state["blocks.conv3.bn.running_var"], torch.from_numpy(params["conv3"]["var"])
    )
    assert state["heads.scenes.weight"].shape[0] == len(SCENES)


class Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/soundnet-pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    payload = npy_bytes({"conv1": Boom()})
    with pytest.raises(WeightsError, match="refusing to load"):
        sound8.read_sound8(payload)


def test_plain_array_and_garbage_are_refused():
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    with pytest.raises(WeightsError, match="plain array"):
        sound8.read_sound8(buffer.getvalue())
    with pytest.raises(WeightsError, match="magic"):
        sound8.read_sound8(pickle.dumps({"a": 1}))


def test_missing_layer_is_named():
    params = fake_params()
    del params["conv8_2"]
    with pytest.raises(WeightsError, match="conv8_2"):
        sound8.read_sound8(npy_bytes(params))


def test_category_names_are_read_without_executing():
    names = sound8.read_category_names("import os\nos.system('false')\n" + NAMES_SOURCE)
    assert names == {"objects": OBJECTS, "scenes": SCENES}
    with pytest.raises(WeightsError, match="categories_places"):
        sound8.read_category_names("categories_imagenet = ['a']")

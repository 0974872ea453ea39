"""Checkpoints: atomic, verified on load, corrupt ones skipped in favour of the previous one."""

from __future__ import annotations

import pytest
import torch

from cpl.engine.checkpoints import CheckpointError, list_checkpoints, load_latest, read_checkpoint, save_checkpoint


def _state(v: float) -> dict:
    return {"epoch": int(v), "w": torch.full((4,), v), "nested": {"m": torch.arange(3)}}


def test_save_keeps_last_two_and_loads_newest(tmp_path):
    for e in (1, 2, 3):
        save_checkpoint(tmp_path, "t", _state(e), e)
    assert [p.name[:14] for p in list_checkpoints(tmp_path, "t")] == ["t-e0002-s00000", "t-e0003-s00000"]
    state, path = load_latest(tmp_path, "t")
    assert path.name.startswith("t-e0003") and torch.equal(state["w"], torch.full((4,), 3.0))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_newest_falls_back_to_previous(tmp_path, damage):
    save_checkpoint(tmp_path, "t", _state(1), 1)
    newest = save_checkpoint(tmp_path, "t", _state(2), 2)
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = len(data) // 2
        newest.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    else:
        newest.write_bytes(b"")
    with pytest.raises(CheckpointError):
        read_checkpoint(newest, "t")
    state, path = load_latest(tmp_path, "t")
    assert path.name.startswith("t-e0001") and state["epoch"] == 1


def test_all_corrupt_is_an_error_and_none_is_none(tmp_path):
    assert load_latest(tmp_path, "t") is None
    p = save_checkpoint(tmp_path, "t", _state(1), 1)
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_latest(tmp_path, "t")


def test_checkpoint_cannot_carry_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    save_checkpoint(tmp_path, "t", {"x": Evil()}, 1)
    with pytest.raises(CheckpointError):
        load_latest(tmp_path, "t")  # weights_only=True refuses arbitrary objects

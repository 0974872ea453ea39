"""Checkpoints: atomic, verified on load, corrupt ones skipped in favour of the previous one."""

from __future__ import annotations

import pytest
import torch

from cpl.engine.checkpoint import CheckpointError, list_checkpoints, load_latest, read_checkpoint, save_checkpoint


def _state(v: float) -> dict:
    return {"epoch": int(v), "w": torch.full((4,), v), "nested": {"m": torch.arange(3)}}


def test_save_keeps_last_two_and_loads_newest(tmp_path):
    for e in (1, 2, 3):
        save_checkpoint(tmp_path, e, _state(e))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch-0002.pt", "epoch-0003.pt"]
    state, path = load_latest(tmp_path)
    assert path.name == "epoch-0003.pt" and torch.equal(state["w"], torch.full((4,), 3.0))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_newest_falls_back_to_previous(tmp_path, damage):
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = len(data) // 2
        newest.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    else:
        newest.write_bytes(b"")
    with pytest.raises(CheckpointError):
        read_checkpoint(newest)
    state, path = load_latest(tmp_path)
    assert path.name == "epoch-0001.pt" and state["epoch"] == 1


def test_all_corrupt_is_an_error_and_none_is_none(tmp_path):
    assert load_latest(tmp_path) is None
    p = save_checkpoint(tmp_path, 1, _state(1))
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_latest(tmp_path)


def test_checkpoint_cannot_carry_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    save_checkpoint(tmp_path, 1, {"x": Evil()})
    with pytest.raises(CheckpointError):
        load_latest(tmp_path)  # weights_only=True refuses arbitrary objects

"""The checks an experiment on a real checkpoint makes before loading anything."""

import jax
import jax.numpy as jnp
import pytest

from mrepe_jax.stages import runtime


def test_compute_dtype_names_the_choices():
    assert runtime.compute_dtype("bfloat16") == jnp.bfloat16 and runtime.compute_dtype("float32") == jnp.float32
    with pytest.raises(ValueError, match=r"model.dtype 'float16' is not one of \['bfloat16', 'float32'\]"):
        runtime.compute_dtype("float16")


def test_several_processes_are_refused(monkeypatch):
    runtime.require_one_process("blip2")
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(NotImplementedError, match="the blip2 experiment runs in one process, not 2"):
        runtime.require_one_process("blip2")

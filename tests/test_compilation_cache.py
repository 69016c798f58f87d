"""diffopt.enable_compilation_cache: a second process reads the compiled programs back.

A fresh interpreter runs a small kdescent fit twice with the same cache
directory. JAX's monitoring events tell what happened: the first run writes
every program it compiles, the second finds every one of them in the cache
and compiles none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import jax.numpy as jnp
    import numpy as np

    import diffopt
    from diffopt import kdescent

    path = diffopt.enable_compilation_cache(sys.argv[1])
    events = {"compiles": 0, "hits": 0, "writes": 0, "saved_s": 0.0}
    jax.monitoring.register_event_listener(
        lambda name, **kw: events.__setitem__("compiles", events["compiles"] + 1)
        if name == "/jax/compilation_cache/compile_requests_use_cache" else None)
    jax.monitoring.register_event_listener(
        lambda name, **kw: events.__setitem__("hits", events["hits"] + 1)
        if name == "/jax/compilation_cache/cache_hits" else None)
    jax.monitoring.register_event_listener(
        lambda name, **kw: events.__setitem__("writes", events["writes"] + 1)
        if name == "/jax/compilation_cache/cache_misses" else None)
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: events.__setitem__("saved_s", events["saved_s"] + secs)
        if name == "/jax/compilation_cache/compile_time_saved_sec" else None)

    train = np.random.default_rng(0).normal(size=(2000, 2)).astype(np.float32)
    kcalc = kdescent.KCalc(kdescent.KPretrainer.from_training_data(
        train, num_pretrain_kernels=100, num_pretrain_fourier_positions=100))
    z = jnp.asarray(np.random.default_rng(1).normal(size=(1000, 2)), jnp.float32)

    def loss(params, key):
        return kcalc.reduced_chisq_loss(key, params[:2] + jnp.exp(params[2:]) * z, density=True)

    params, losses = kdescent.adam(loss, jnp.array([0.5, -0.5, 0.2, -0.1]), nsteps=20,
                                   learning_rate=0.05, progress=False)
    assert np.all(np.isfinite(np.asarray(losses)))
    print(json.dumps(dict(events, path=path, final=np.asarray(params[-1]).tolist())))
""")


def _run(cache_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cache_dir)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_run_reads_every_program_from_the_cache(tmp_path):
    cache_dir = tmp_path / "jax-cache"
    first = _run(cache_dir)
    assert first["path"] == str(cache_dir)
    entries = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    # Every program was written, the small ones included (a program compiled
    # twice in one run is read back the second time).
    assert first["writes"] >= 10 and first["writes"] + first["hits"] == first["compiles"]
    assert len(entries) >= first["writes"]
    second = _run(cache_dir)
    # The second run compiles nothing: every program comes from the cache.
    assert second["compiles"] == first["compiles"]
    assert second["hits"] == second["compiles"] and second["writes"] == 0
    assert second["final"] == first["final"]  # the same programs, the same numbers
    print(f"first run wrote {first['writes']} programs; the second read them all back "
          f"(JAX reports {second['saved_s']:.2f} s of compilation saved)")


def test_path_defaults_and_bad_input(tmp_path, monkeypatch):
    import jax

    import diffopt

    previous = jax.config.jax_compilation_cache_dir
    try:
        # Without a path: JAX's own setting when there is one.
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "from-jax"))
        assert diffopt.enable_compilation_cache() == str(tmp_path / "from-jax")
        assert (tmp_path / "from-jax").is_dir()
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
        # ... else the user's cache directory.
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert diffopt.enable_compilation_cache() == str(tmp_path / "xdg" / "diffopt" / "jax")
        with pytest.raises(TypeError, match="path must be"):
            diffopt.enable_compilation_cache(3)
        with pytest.raises(ValueError, match="min_compile_time_secs must be >= 0"):
            diffopt.enable_compilation_cache(tmp_path, min_compile_time_secs=-1)
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()

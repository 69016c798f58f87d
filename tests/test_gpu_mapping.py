"""One rank per GPU: the decision (pure, faked devices), the GPU count, and the import-time glue.

The decision and the count run here on a machine without GPUs, with a faked
device list: a folder standing for /proc/driver/nvidia/gpus, or a fake
``nvidia-smi``. Applying a plan is checked in a fresh process, before and
after JAX has started its backend, and ``map_ranks_to_gpus`` under a real
mpiexec (tests/mpi/gpu_mapping.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, TESTS, run_mpi
from diffopt._gpus import GpuPlan, count_gpus, plan_gpus

NO_PREALLOCATION = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


@pytest.mark.parametrize(
    "local_size, num_gpus, devices, environ",
    [
        (4, 4, [0, 1, 2, 3], {}),  # one rank per GPU: JAX's default memory use
        (2, 4, [0, 1], {}),  # fewer ranks than GPUs
        (2, 1, [0, 0], NO_PREALLOCATION),  # two ranks share the one GPU
        (8, 4, [0, 1, 2, 3, 0, 1, 2, 3], NO_PREALLOCATION),
        (3, 2, [0, 1, 0], NO_PREALLOCATION),
    ],
)
def test_each_rank_gets_the_gpu_of_its_node_local_rank(local_size, num_gpus, devices, environ):
    plans = [plan_gpus(r, local_size, num_gpus, {}) for r in range(local_size)]
    assert [p.device for p in plans] == devices
    assert all(p.environ == environ for p in plans)


@pytest.mark.parametrize(
    "environ, jax_option, why",
    [
        ({"CUDA_VISIBLE_DEVICES": "3"}, "all", "CUDA_VISIBLE_DEVICES is set"),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, "all", "CUDA_VISIBLE_DEVICES is set"),
        ({"CUDA_VISIBLE_DEVICES": ""}, "all", "CUDA_VISIBLE_DEVICES is set"),
        ({}, "2", "jax_cuda_visible_devices is set"),
        ({"DIFFOPT_NO_GPU_MAPPING": "1"}, "all", "DIFFOPT_NO_GPU_MAPPING is set"),
    ],
)
def test_a_choice_made_by_the_user_or_the_scheduler_is_kept(environ, jax_option, why):
    for rank in range(2):
        plan = plan_gpus(rank, 2, 1, environ, jax_option)
        assert plan == GpuPlan(None, {}, plan.reason)
        assert plan.reason.startswith(why)


def test_opt_out_set_to_zero_is_not_an_opt_out():
    assert plan_gpus(1, 2, 2, {"DIFFOPT_NO_GPU_MAPPING": "0"}).device == 1


@pytest.mark.parametrize("local_size, num_gpus", [(1, 4), (1, 1), (4, 0), (1, 0)])
def test_nothing_to_decide_without_gpus_or_with_one_rank_per_node(local_size, num_gpus):
    plan = plan_gpus(0, local_size, num_gpus, {})
    assert plan.device is None and plan.environ == {}


@pytest.mark.parametrize(
    "setting", ["XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR"]
)
def test_a_memory_setting_of_the_user_is_kept(setting):
    plan = plan_gpus(1, 4, 2, {setting: "x"})
    assert plan.device == 1 and plan.environ == {}


# --- counting GPUs without CUDA --------------------------------------------------------


def fake_nvidia_smi(folder, output: str, status: int = 0):
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 3\nprintf '{output}'\nexit {status}\n")
    script.chmod(0o755)
    return str(script)


def test_count_gpus_reads_the_driver_folder(tmp_path):
    gpus = tmp_path / "gpus"
    for bus in ("0000:18:00.0", "0000:3b:00.0", "0000:86:00.0"):
        (gpus / bus).mkdir(parents=True)
    assert count_gpus(str(gpus), nvidia_smi=str(tmp_path / "absent")) == 3
    # The folder wins over nvidia-smi.
    assert count_gpus(str(gpus), nvidia_smi=fake_nvidia_smi(tmp_path, "GPU 0: A\\n")) == 3


def test_count_gpus_asks_nvidia_smi_without_the_driver_folder(tmp_path):
    listing = "GPU 0: NVIDIA H100 (UUID: GPU-1)\\n  MIG 1g.10gb Device 0: (UUID: MIG-1)\\nGPU 1: NVIDIA H100 (UUID: GPU-2)\\n"
    assert count_gpus(str(tmp_path / "absent"), nvidia_smi=fake_nvidia_smi(tmp_path, listing)) == 2


def test_count_gpus_is_zero_when_nothing_says(tmp_path):
    absent = str(tmp_path / "absent")
    assert count_gpus(absent, nvidia_smi=absent) == 0
    # nvidia-smi present but failing (no driver loaded): no GPU.
    assert count_gpus(absent, nvidia_smi=fake_nvidia_smi(tmp_path, "GPU 0: A\\n", status=9)) == 0


# --- applying a plan -----------------------------------------------------------------------

APPLY = """
import os, sys, warnings
import jax
from diffopt._gpus import GpuPlan, apply_gpu_plan
plan = GpuPlan(1, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, "test")
if sys.argv[1] == "late":
    jax.numpy.zeros(1).block_until_ready()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    applied = apply_gpu_plan(plan)
print("APPLIED", applied, jax.config._read("jax_cuda_visible_devices"),
      os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"), len(caught))
for w in caught:
    print("WARNING", w.message)
print("DEVICES", jax.devices())
"""


def apply_in_fresh_process(when: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_PREALLOCATE")}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", APPLY, when], capture_output=True, text=True,
                          timeout=120, env=env, check=True)
    return proc.stdout


def test_a_plan_takes_effect_before_jax_starts():
    out = apply_in_fresh_process("early")
    assert "APPLIED True 1 false 0" in out, out
    assert "DEVICES [CpuDevice(id=0)]" in out, out  # the CPU backend still starts


def test_a_plan_made_after_jax_started_changes_nothing_and_warns():
    out = apply_in_fresh_process("late")
    assert "APPLIED False all None 1" in out, out
    assert "import diffopt before any JAX computation" in out


# --- at import, under a real mpiexec ----------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [2, 3])
def test_ranks_of_one_node_get_their_gpus_under_mpiexec(nranks):
    proc = run_mpi(TESTS / "mpi" / "gpu_mapping.py", nranks, str(nranks))
    assert f"gpu mapping: OK on {nranks} ranks" in proc.stdout

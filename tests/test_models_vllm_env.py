"""What every chexrl vLLM engine starts with (chexrl/models/vllm_env.py), and that a user's own KV cache
size is kept while the engine-core switch is not theirs to keep."""

import os

from chexrl.config import RolloutConfig
from chexrl.models.vllm_env import actor_env, set_vllm_env, vllm_env


def test_the_variables():
    assert vllm_env(1.0) == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert vllm_env(2.6, in_process=False) == {"VLLM_CPU_KVCACHE_SPACE": "3"}
    assert vllm_env(0.2)["VLLM_CPU_KVCACHE_SPACE"] == "1"  # at least 1 GiB
    # the config's default is 1 GiB
    assert vllm_env(RolloutConfig(model="m").kv_cache_gib)["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_actor_env_sets_threads():
    assert actor_env(4.0, 3) == {
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "OMP_NUM_THREADS": "3",
    }
    assert actor_env(1.0, None)["OMP_NUM_THREADS"] == str(os.cpu_count() or 1)  # None: all cores


def test_set_vllm_env_fills_in():
    env: dict[str, str] = {"PATH": "/bin"}
    set_vllm_env(2.0, environ=env)
    assert env == {"PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def test_set_vllm_env_keeps_the_users_kv_cache_and_forces_in_process():
    env = {"VLLM_CPU_KVCACHE_SPACE": "7", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    set_vllm_env(1.0, environ=env)
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "7", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def test_set_vllm_env_leaves_multiprocessing_alone_unless_in_process():
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    set_vllm_env(1.0, in_process=False, environ=env)
    assert env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def test_set_vllm_env_defaults_to_os_environ(monkeypatch):
    for key in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(key, "")  # recorded, so that teardown restores the session's value or absence
        monkeypatch.delenv(key)
    set_vllm_env(3.0)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"

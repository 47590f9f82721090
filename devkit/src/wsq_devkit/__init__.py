"""wsq's development harness, shared by the test suites, the demo and the benchmark.

A private ``redis-server`` on a free port (never the machine's shared 6379), a private Redis
Cluster (``RedisCluster``: 3 masters and their replicas, with fail-over and slot moves), child
processes with captured logs, and polling with a deadline (never sleep to synchronise).
"""

from wsq_devkit.polling import wait_until, wait_until_async
from wsq_devkit.ports import free_port
from wsq_devkit.processes import ManagedProcess, run_module
from wsq_devkit.proxy import TcpProxy
from wsq_devkit.redis_cluster import RedisCluster
from wsq_devkit.redis_server import RedisServer, find_redis_cli, find_redis_server

__all__ = [
    "ManagedProcess",
    "RedisCluster",
    "RedisServer",
    "TcpProxy",
    "find_redis_cli",
    "find_redis_server",
    "free_port",
    "run_module",
    "wait_until",
    "wait_until_async",
]

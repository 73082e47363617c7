"""scripts/process_commands.py: the one table of latentd's process command lines.

That the containers run the same commands is checked in test_containers.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from scripts.process_commands import API, GENERATION_WORKER, WEBHOOK_WORKER, service_commands

REPO = Path(__file__).resolve().parents[2]


def test_the_commands_are_the_fixed_process_model():
    commands = service_commands("/venv/bin/python", host="::1", port=9000, node_tag="t1")

    assert commands == {
        # One prefork child per worker: each process loads the models once and runs one job.
        GENERATION_WORKER: [
            "/venv/bin/python", "-m", "celery", "-A", "worker.generation_worker", "worker",
            "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO", "-n", "gen-t1@%h",
        ],
        WEBHOOK_WORKER: [
            "/venv/bin/python", "-m", "celery", "-A", "worker.webhook_worker", "worker",
            "--pool", "threads", "--concurrency", "8", "-Q", "webhooks", "-n", "webhooks-t1@%h",
        ],
        API: ["/venv/bin/python", "-m", "uvicorn", "api.main:app", "--host", "::1",
              "--port", "9000"],
    }
    # The order they are started in (and stopped in reverse).
    assert list(commands) == [GENERATION_WORKER, WEBHOOK_WORKER, API]


def test_webhook_concurrency_and_log_level_are_knobs():
    commands = service_commands("python", host="h", port=1, node_tag="t",
                                webhook_concurrency=4, webhook_loglevel="INFO")

    webhook = commands[WEBHOOK_WORKER]
    assert webhook[webhook.index("--concurrency") + 1] == "4"
    assert webhook[webhook.index("--loglevel") + 1] == "INFO"
    assert "--loglevel" not in service_commands("python", host="h", port=1,
                                                node_tag="t")[WEBHOOK_WORKER]


def test_node_names_differ_between_services_on_one_host():
    first = service_commands("python", host="h", port=1, node_tag="a")
    second = service_commands("python", host="h", port=1, node_tag="b")
    for worker in (GENERATION_WORKER, WEBHOOK_WORKER):
        names = [argv[argv.index("-n") + 1] for argv in (first[worker], second[worker])]
        assert names[0] != names[1]
        assert all(name.endswith("@%h") for name in names)


def test_no_other_script_writes_a_process_command_line():
    """run.py, service_processes.py and the benchmark take their commands from the table."""
    table = REPO / "scripts" / "process_commands.py"
    targets = re.compile(r"""["'](worker\.generation_worker|worker\.webhook_worker|api\.main:app)["']""")
    sources = [*(REPO / "scripts").glob("*.py"), *(REPO / "bench").glob("*.py")]
    assert table in sources
    writers = {str(path.relative_to(REPO)): targets.findall(path.read_text())
               for path in sources if path != table}
    assert {path: found for path, found in writers.items() if found} == {}

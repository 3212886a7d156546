"""The sandbox holds against the attacks it names: each test is a program that tries to break out."""

import os
import socket
import textwrap
import threading
import time
import uuid

import pytest

from granite_cli.verify.sandbox import Limits, isolation, run_python

pytestmark = pytest.mark.skipif(not isolation().available, reason=f"no sandbox here: {isolation().reason}")


def run(source: str, **limits):
    return run_python(textwrap.dedent(source), limits=Limits(**limits) if limits else None)


def test_a_program_passes_fails_or_times_out_with_the_reason():
    assert run("print('hello')").status == "passed"
    failed = run("assert 1 + 1 == 3, 'arithmetic'")
    assert failed.status == "failed" and "arithmetic" in failed.detail
    timed_out = run("while True: pass", wall_seconds=1.0)
    assert timed_out.status == "timeout" and not timed_out.passed


def test_a_program_that_does_not_compile_fails_as_in_the_sandbox_without_starting_one(monkeypatch):
    """Compiled first in this process (which runs none of its code): the verdict and reason the sandbox gives, at no
    sandbox's cost; a null byte (no command line carries one) fails instead of raising."""
    import subprocess

    broken = ["def f(:\n    return 1", "return 1", "  x = 1", "print('a\x00b')"]
    in_sandbox = run_python("exec(compile(" + repr(broken[0]) + ", '<string>', 'exec'))")
    assert in_sandbox.status == "failed" and in_sandbox.detail == "SyntaxError: invalid syntax"

    def no_sandbox(*args, **kwargs):
        raise AssertionError("a sandbox was started")

    monkeypatch.setattr(subprocess, "Popen", no_sandbox)
    outcomes = [run_python(program) for program in broken]
    assert [o.status for o in outcomes] == ["failed"] * 4
    assert [o.detail for o in outcomes[:3]] == ["SyntaxError: invalid syntax", "SyntaxError: 'return' outside function",
                                                "IndentationError: unexpected indent"]
    assert "null byte" in outcomes[3].detail
    with pytest.raises(AssertionError, match="a sandbox was started"):  # a program that compiles still runs there
        run_python("x = 1")


def test_writes_outside_the_scratch_directory_fail_and_nothing_reaches_the_host(tmp_path):
    marker = tmp_path / "escaped"
    outcome = run(f"""
        open('/tmp/inside', 'w').write('scratch is writable')
        for target in ({str(marker)!r}, '/usr/escaped', '/escaped', '/proc/escaped'):
            try:
                open(target, 'w').write('x')
            except OSError:
                continue
            raise SystemExit('wrote ' + target)
    """)
    assert outcome.passed, outcome.detail
    assert not marker.exists()


def test_host_files_are_not_there_to_read():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outcome = run(f"""
        import os
        for path in ('/etc/shadow', '/etc/passwd', {repo!r} + '/README.md', os.path.expanduser('~root') + '/.bashrc',
                     '/home', '/run', '/var'):
            assert not os.path.exists(path), path
    """)
    assert outcome.passed, outcome.detail


def test_a_process_that_left_the_session_dies_with_the_sandbox():
    tag = f"granite-escape-{uuid.uuid4().hex}"
    outcome = run(f"""
        import os, subprocess, sys, time
        if os.fork() == 0:           # double fork and a new session: no longer in the program's process group
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {tag!r}])
            os._exit(0)
        time.sleep(60)
    """, wall_seconds=1.5)
    assert outcome.status == "timeout"
    time.sleep(0.5)
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if tag.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                survivors.append(pid)
        except OSError:
            continue
    assert survivors == []


def test_it_sees_only_its_own_processes_and_none_of_the_parents_environment(monkeypatch):
    monkeypatch.setenv("GRANITE_TEST_SECRET", "hunter2")
    outcome = run("""
        import os
        pids = [p for p in os.listdir('/proc') if p.isdigit()]
        assert len(pids) <= 3, pids                   # bwrap's init and this program
        assert 'GRANITE_TEST_SECRET' not in os.environ
        for pid in pids:
            assert b'hunter2' not in open(f'/proc/{pid}/environ', 'rb').read()
        assert os.getuid() != 0
        try:
            os.kill(1, 9)                           # the namespace's init is the sandbox's own, never the host's
        except OSError:
            pass
    """)
    assert outcome.passed, outcome.detail


def test_no_network_not_even_the_hosts_loopback_services():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    outcome = run(f"""
        import socket
        try:
            socket.create_connection(('127.0.0.1', {port}), timeout=2)
        except OSError:
            pass
        else:
            raise SystemExit('connected to the host')
    """)
    server.close()
    assert outcome.passed, outcome.detail
    assert accepted == []


@pytest.mark.skipif(isolation().whole_sandbox == "nothing", reason="root without a cgroup: nothing bounds the process count")
def test_a_bounded_fork_bomb_is_contained():
    outcome = run("""
        import os, time
        n = 0
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            n += 1
        print(n)
        assert n < 300
    """, processes=32)
    assert outcome.passed, outcome.detail


def test_one_allocation_of_4_gb_fails_cleanly():
    big = run("x = bytearray(4 << 30)")
    assert big.status == "failed" and "MemoryError" in big.detail


@pytest.mark.skipif(isolation().whole_sandbox != "cgroup", reason="only a cgroup bounds the sandbox's memory as a whole")
def test_memory_is_bounded_for_the_sandbox_as_a_whole():
    children = run("""
        import os, time
        kids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                block = bytearray(600 << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(1)
                os._exit(0)
            kids.append(pid)
        statuses = [os.waitpid(kid, 0)[1] for kid in kids]
        assert all(status == 0 for status in statuses), statuses
    """, memory_mb=1024)
    assert not children.passed  # three children of 600 MB do not all fit in 1 GB


def test_output_and_files_are_size_bounded():
    flood = run("import sys\nwhile True: sys.stdout.write('x' * 65536)", file_mb=1)
    assert not flood.passed and flood.status in ("failed", "timeout")
    scratch = run("open('/tmp/big', 'wb').write(b'x' * (200 << 20))", scratch_mb=16, file_mb=512, memory_mb=2048)
    assert not scratch.passed


def test_many_programs_run_at_once_in_order():
    from granite_cli.verify import verify_batch

    verdicts = verify_batch([f"assert {i} % 2 == 0" for i in range(6)], [{"type": "code", "tests": ""}] * 6, workers=3)
    assert [v.score for v in verdicts] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]

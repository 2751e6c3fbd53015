"""The README's "A key administrator and a key user" block, run as it stands (issue 23):
`kmsfs kms serve` with two principals, the administrator making the key with the aws CLI,
the key user mounting a volume and reading, the administrator refused Decrypt, and both
audit logs naming who did what. Only the port is changed, to a free one.

Needs KMSFS_BIN, the aws CLI of this venv and FUSE (scripts/test.sh runs it as root).
"""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
HEADING = "### A key administrator and a key user"


def scenario():
    text = open(README).read()
    after = text[text.index(HEADING):]
    return re.search(r"```sh\n(.*?)```", after, re.S).group(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_key_administrator_and_key_user(tmp_path):
    binary = os.environ.get("KMSFS_BIN")
    if not binary:
        pytest.skip("KMSFS_BIN is not set")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    script = scenario().replace("127.0.0.1:8899", f"127.0.0.1:{free_port()}")
    # Whatever happens, nothing stays mounted and the server stops.
    cleanup = "trap 'kmsfs unmount ~/team 2>/dev/null || true; kill $KMS_PID 2>/dev/null || true' EXIT\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "XDG_"))}
    env["HOME"] = str(tmp_path)
    env["PATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(binary)),
                                   os.path.dirname(sys.executable), env.get("PATH", "")])
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", cleanup + script], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the README's scenario did not finish:\n{out}")
    finally:
        if os.path.ismount(tmp_path / "team"):
            subprocess.run(["fusermount3", "-u", str(tmp_path / "team")], check=False)
    assert proc.returncode == 0, out
    admin, user = ("arn:aws:iam::111122223333:user/key-admin",
                   "arn:aws:iam::111122223333:user/key-user")
    assert "quarterly numbers" in out, out
    assert f"restore-drill\t{user}" in out, out
    assert (f"User: {admin} is not authorized to perform: kms:Decrypt on resource: "
            "arn:aws:kms:us-east-1:111122223333:key/") in out, out
    assert "refused, as it should be" in out, out
    lines = out.splitlines()
    def kms_line(event, outcome, who):
        return any(l.split()[1:4] == [event, outcome, who] for l in lines if len(l.split()) > 3)
    assert kms_line("CreateKey", "success", admin), out
    assert kms_line("TagResource", "success", admin), out
    assert kms_line("PutKeyPolicy", "success", admin), out
    assert kms_line("CreateGrant", "success", admin), out
    assert kms_line("Decrypt", "success", user), out
    assert kms_line("Decrypt", "failure", admin), out
    assert any("key_unwrapped" in l and "(cat) report.txt" in l for l in lines), out
    assert any("access_denied" in l and admin in l for l in lines), out

"""The AWS command line (awscli, from tests/python/requirements.txt) against
`kmsfs kms serve` (issue 23): a key administrator makes a key with a policy, tags it and
grants a key user Decrypt; the key user encrypts and decrypts; the administrator is
refused Decrypt. Everything goes through `aws kms ... --endpoint-url`.

Needs KMSFS_BIN (the kmsfs binary); scripts/test.sh sets it.
"""

import base64
import json
import os
import subprocess
import sys

import pytest

from test_kms_boto3 import start_server, stop_server
from test_kms_policies_boto3 import ADMIN, CREDENTIALS, USER, lab_policy


def aws_binary():
    """The `aws` installed beside this venv's python."""
    path = os.path.join(os.path.dirname(sys.executable), "aws")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: scripts/setup.sh installs awscli in the venv")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kms-awscli")
    cred = tmp / "credentials"
    cred.write_text(CREDENTIALS)
    proc, info = start_server(tmp, "--credentials", str(cred))
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base.update({
        "AWS_SHARED_CREDENTIALS_FILE": str(cred),
        "AWS_CONFIG_FILE": str(tmp / "no-config"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "HOME": str(tmp),
    })
    try:
        yield {"url": info["url"], "env": base, "tmp": tmp}
    finally:
        stop_server(proc)


def aws(env, profile, *args, ok=True):
    """Runs `aws kms ARGS` as PROFILE; returns parsed JSON output (or the process)."""
    out = subprocess.run(
        [aws_binary(), "kms", *args, "--endpoint-url", env["url"], "--profile", profile,
         "--output", "json"],
        env=env["env"], capture_output=True, text=True, timeout=60,
    )
    if not ok:
        assert out.returncode != 0, out.stdout
        return out
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


def test_aws_cli_key_administrator_and_key_user(env):
    policy_file = env["tmp"] / "policy.json"
    policy_file.write_text(lab_policy())
    made = aws(env, "key-admin", "create-key", "--description", "awscli lab",
               "--policy", f"file://{policy_file}")
    key = made["KeyMetadata"]["Arn"]
    got = aws(env, "key-admin", "get-key-policy", "--key-id", key, "--policy-name", "default")
    assert json.loads(got["Policy"]) == json.loads(lab_policy())
    aws(env, "key-admin", "put-key-policy", "--key-id", key, "--policy-name", "default",
        "--policy", f"file://{policy_file}")
    assert aws(env, "key-admin", "list-key-policies", "--key-id", key)["PolicyNames"] == [
        "default"]
    aws(env, "key-admin", "tag-resource", "--key-id", key,
        "--tags", "TagKey=team,TagValue=storage")
    tags = aws(env, "key-admin", "list-resource-tags", "--key-id", key)["Tags"]
    assert tags == [{"TagKey": "team", "TagValue": "storage"}]
    aws(env, "key-admin", "update-key-description", "--key-id", key, "--description", "v2")
    assert aws(env, "key-user", "describe-key", "--key-id", key)["KeyMetadata"][
        "Description"] == "v2"

    plain = env["tmp"] / "plain"
    plain.write_bytes(b"hello from awscli")
    enc = aws(env, "key-user", "encrypt", "--key-id", key, "--plaintext", f"fileb://{plain}",
              "--encryption-context", "purpose=test")
    blob = env["tmp"] / "blob"
    blob.write_bytes(base64.b64decode(enc["CiphertextBlob"]))
    dec = aws(env, "key-user", "decrypt", "--ciphertext-blob", f"fileb://{blob}",
              "--encryption-context", "purpose=test")
    assert base64.b64decode(dec["Plaintext"]) == b"hello from awscli"
    refused = aws(env, "key-admin", "decrypt", "--ciphertext-blob", f"fileb://{blob}",
                  "--encryption-context", "purpose=test", ok=False)
    assert "AccessDeniedException" in refused.stderr
    assert f"User: {ADMIN} is not authorized to perform: kms:Decrypt" in refused.stderr

    grant = aws(env, "key-admin", "create-grant", "--key-id", key, "--grantee-principal",
                ADMIN, "--retiring-principal", ADMIN, "--operations", "Decrypt",
                "--constraints", "EncryptionContextSubset={purpose=test}", "--name", "audit")
    grants = aws(env, "key-admin", "list-grants", "--key-id", key)["Grants"]
    assert [g["GrantId"] for g in grants] == [grant["GrantId"]]
    dec = aws(env, "key-admin", "decrypt", "--ciphertext-blob", f"fileb://{blob}",
              "--encryption-context", "purpose=test", "--grant-tokens", grant["GrantToken"])
    assert base64.b64decode(dec["Plaintext"]) == b"hello from awscli"
    aws(env, "key-admin", "retire-grant", "--grant-token", grant["GrantToken"])
    assert aws(env, "key-admin", "list-grants", "--key-id", key)["Grants"] == []
    aws(env, "key-admin", "decrypt", "--ciphertext-blob", f"fileb://{blob}",
        "--encryption-context", "purpose=test", ok=False)

    again = aws(env, "key-admin", "create-grant", "--key-id", key, "--grantee-principal", USER,
                "--operations", "Decrypt")
    aws(env, "key-admin", "revoke-grant", "--key-id", key, "--grant-id", again["GrantId"])
    aws(env, "key-admin", "rotate-key-on-demand", "--key-id", key)
    rotations = aws(env, "key-admin", "list-key-rotations", "--key-id", key)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]
    refused = aws(env, "key-user", "schedule-key-deletion", "--key-id", key, ok=False)
    assert "AccessDeniedException" in refused.stderr

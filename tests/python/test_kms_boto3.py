"""The official AWS SDK for Python (boto3) against `kmsfs kms serve`.

Drives every operation the local KMS implements and asserts each AWS error name, so the
server stays faithful enough that an AWS SDK cannot tell it from AWS for these calls.
Needs KMSFS_BIN (the kmsfs binary); scripts/test.sh sets it.
"""

import base64
import configparser
import datetime
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request

import boto3
import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

REGION = "us-east-1"
CONFIG = Config(
    retries={"total_max_attempts": 1},
    parameter_validation=False,  # let invalid values reach the server
    connect_timeout=5,
    read_timeout=30,
)


def start_server(tmp, *extra):
    """Starts `kmsfs kms serve` on a free port; returns (process, info)."""
    binary = os.environ.get("KMSFS_BIN")
    if not binary:
        pytest.skip("KMSFS_BIN is not set")
    proc = subprocess.Popen(
        [binary, "kms", "serve", "--listen", "127.0.0.1:0",
         "--state", str(tmp / "state.json"), "--audit-log", str(tmp / "audit.jsonl"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("listening on http://"), first
        second = proc.stdout.readline().strip()
        assert second.startswith("credentials: "), second
    except BaseException:
        stop_server(proc)
        raise
    cred_path = second[len("credentials: "):].split(" ")[0]
    if not os.path.isabs(cred_path):
        cred_path = os.path.join(os.getcwd(), cred_path)
    ini = configparser.ConfigParser()
    ini.read(cred_path)
    return proc, {
        "url": first[len("listening on "):],
        "cred_path": cred_path,
        "access_key": ini["default"]["aws_access_key_id"],
        "secret_key": ini["default"]["aws_secret_access_key"],
        "audit": tmp / "audit.jsonl",
    }


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with credentials it generated itself on first start."""
    proc, info = start_server(tmp_path_factory.mktemp("kms"))
    try:
        yield info
    finally:
        stop_server(proc)


def make_client(server, access_key=None, secret_key=None):
    return boto3.client(
        "kms", endpoint_url=server["url"], region_name=REGION, config=CONFIG,
        aws_access_key_id=access_key or server["access_key"],
        aws_secret_access_key=secret_key or server["secret_key"],
    )


@pytest.fixture()
def kms(server):
    return make_client(server)


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def expect_error(code, fn, **kwargs):
    with pytest.raises(ClientError) as e:
        fn(**kwargs)
    assert error_code(e) == code, e.value.response
    return e.value


def new_key(kms, **kwargs):
    return kms.create_key(**kwargs)["KeyMetadata"]


def test_create_describe_list_keys_with_every_identifier_form(kms):
    md = new_key(kms, Description="boto3 test")
    assert md["Arn"].startswith("arn:aws:kms:us-east-1:") and md["Arn"].endswith(md["KeyId"])
    assert (md["KeyState"], md["Enabled"], md["Description"]) == ("Enabled", True, "boto3 test")
    assert md["KeySpec"] == "SYMMETRIC_DEFAULT" and md["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert isinstance(md["CreationDate"], datetime.datetime)
    kms.create_alias(AliasName="alias/boto-forms", TargetKeyId=md["KeyId"])
    alias_arn = md["Arn"].split("key/")[0] + "alias/boto-forms"
    for form in (md["KeyId"], md["Arn"], "alias/boto-forms", alias_arn):
        assert kms.describe_key(KeyId=form)["KeyMetadata"]["Arn"] == md["Arn"], form
    keys = kms.list_keys()["Keys"]
    assert {"KeyId": md["KeyId"], "KeyArn": md["Arn"]} in keys
    pages = list(kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 1}))
    assert sum(len(p["Keys"]) for p in pages) == len(keys)
    expect_error("NotFoundException", kms.describe_key,
                 KeyId="00000000-0000-4000-8000-000000000000")
    expect_error("NotFoundException", kms.describe_key, KeyId="alias/does-not-exist")


def test_aliases(kms):
    k1, k2 = new_key(kms), new_key(kms)
    kms.create_alias(AliasName="alias/boto-app", TargetKeyId=k1["Arn"])
    expect_error("AlreadyExistsException", kms.create_alias,
                 AliasName="alias/boto-app", TargetKeyId=k2["KeyId"])
    expect_error("ValidationException", kms.create_alias,
                 AliasName="no-prefix", TargetKeyId=k2["KeyId"])
    aliases = kms.list_aliases(KeyId=k1["KeyId"])["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/boto-app"]
    assert aliases[0]["TargetKeyId"] == k1["KeyId"]
    kms.update_alias(AliasName="alias/boto-app", TargetKeyId=k2["KeyId"])
    assert kms.describe_key(KeyId="alias/boto-app")["KeyMetadata"]["KeyId"] == k2["KeyId"]
    expect_error("NotFoundException", kms.update_alias,
                 AliasName="alias/boto-none", TargetKeyId=k2["KeyId"])
    kms.delete_alias(AliasName="alias/boto-app")
    expect_error("NotFoundException", kms.delete_alias, AliasName="alias/boto-app")
    assert all(a["AliasName"] != "alias/boto-app" for a in kms.list_aliases()["Aliases"])


def test_data_keys_and_encryption_context(kms):
    k1, k2 = new_key(kms), new_key(kms)
    ctx = {"file": "/a/b", "fs": "kmsfs"}
    dk = kms.generate_data_key(KeyId=k1["KeyId"], KeySpec="AES_256", EncryptionContext=ctx)
    assert len(dk["Plaintext"]) == 32 and dk["KeyId"] == k1["Arn"]
    out = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    assert out["Plaintext"] == dk["Plaintext"] and out["KeyId"] == k1["Arn"]
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx,
                       KeyId=k1["Arn"])["Plaintext"] == dk["Plaintext"]
    expect_error("InvalidCiphertextException", kms.decrypt,
                 CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"file": "/a/b"})
    expect_error("InvalidCiphertextException", kms.decrypt, CiphertextBlob=b"garbage-blob")
    expect_error("IncorrectKeyException", kms.decrypt, CiphertextBlob=dk["CiphertextBlob"],
                 EncryptionContext=ctx, KeyId=k2["KeyId"])
    n = kms.generate_data_key(KeyId=k1["Arn"], NumberOfBytes=1024)
    assert len(n["Plaintext"]) == 1024
    wp = kms.generate_data_key_without_plaintext(KeyId=k1["Arn"], KeySpec="AES_128")
    assert "Plaintext" not in wp
    assert len(kms.decrypt(CiphertextBlob=wp["CiphertextBlob"])["Plaintext"]) == 16
    for bad in ({"NumberOfBytes": 0}, {"NumberOfBytes": 1025}, {},
                {"NumberOfBytes": 32, "KeySpec": "AES_256"}):
        expect_error("ValidationException", kms.generate_data_key, KeyId=k1["KeyId"], **bad)


def test_encrypt_decrypt_re_encrypt(kms):
    k1, k2 = new_key(kms), new_key(kms)
    enc = kms.encrypt(KeyId=k1["KeyId"], Plaintext=b"x" * 4096, EncryptionContext={"a": "1"})
    assert enc["KeyId"] == k1["Arn"] and enc["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    expect_error("ValidationException", kms.encrypt, KeyId=k1["KeyId"], Plaintext=b"x" * 4097)
    re = kms.re_encrypt(CiphertextBlob=enc["CiphertextBlob"],
                        SourceEncryptionContext={"a": "1"},
                        DestinationKeyId=k2["Arn"], DestinationEncryptionContext={"b": "2"})
    assert (re["SourceKeyId"], re["KeyId"]) == (k1["Arn"], k2["Arn"])
    out = kms.decrypt(CiphertextBlob=re["CiphertextBlob"], EncryptionContext={"b": "2"})
    assert out["Plaintext"] == b"x" * 4096 and out["KeyId"] == k2["Arn"]
    expect_error("InvalidCiphertextException", kms.re_encrypt,
                 CiphertextBlob=enc["CiphertextBlob"], DestinationKeyId=k2["Arn"])
    expect_error("IncorrectKeyException", kms.re_encrypt, CiphertextBlob=enc["CiphertextBlob"],
                 SourceEncryptionContext={"a": "1"}, SourceKeyId=k2["Arn"],
                 DestinationKeyId=k1["Arn"])


def test_enable_disable(kms):
    k = new_key(kms)
    blob = kms.encrypt(KeyId=k["KeyId"], Plaintext=b"s")["CiphertextBlob"]
    kms.disable_key(KeyId=k["KeyId"])
    md = kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]
    assert (md["KeyState"], md["Enabled"]) == ("Disabled", False)
    expect_error("DisabledException", kms.encrypt, KeyId=k["KeyId"], Plaintext=b"s")
    expect_error("DisabledException", kms.decrypt, CiphertextBlob=blob)
    kms.enable_key(KeyId=k["Arn"])
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"s"


def test_deletion_schedule_and_cancel(kms):
    k = new_key(kms)
    for days in (6, 31):
        expect_error("ValidationException", kms.schedule_key_deletion,
                     KeyId=k["KeyId"], PendingWindowInDays=days)
    s = kms.schedule_key_deletion(KeyId=k["KeyId"], PendingWindowInDays=7)
    assert s["KeyState"] == "PendingDeletion" and s["PendingWindowInDays"] == 7
    assert isinstance(s["DeletionDate"], datetime.datetime)
    expect_error("KMSInvalidStateException", kms.generate_data_key,
                 KeyId=k["KeyId"], KeySpec="AES_256")
    expect_error("KMSInvalidStateException", kms.enable_key, KeyId=k["KeyId"])
    assert kms.cancel_key_deletion(KeyId=k["KeyId"])["KeyId"] == k["Arn"]
    assert kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"] == "Disabled"
    expect_error("KMSInvalidStateException", kms.cancel_key_deletion, KeyId=k["KeyId"])


def test_rotation_keeps_old_blobs_readable(kms):
    k = new_key(kms)
    assert kms.get_key_rotation_status(KeyId=k["KeyId"])["KeyRotationEnabled"] is False
    kms.enable_key_rotation(KeyId=k["KeyId"], RotationPeriodInDays=180)
    st = kms.get_key_rotation_status(KeyId=k["KeyId"])
    assert st["KeyRotationEnabled"] is True and st["RotationPeriodInDays"] == 180
    old = kms.encrypt(KeyId=k["KeyId"], Plaintext=b"old")["CiphertextBlob"]
    assert kms.rotate_key_on_demand(KeyId=k["KeyId"])["KeyId"] == k["Arn"]
    new = kms.encrypt(KeyId=k["KeyId"], Plaintext=b"new")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"old"
    assert kms.decrypt(CiphertextBlob=new)["Plaintext"] == b"new"
    kms.disable_key_rotation(KeyId=k["KeyId"])
    assert kms.get_key_rotation_status(KeyId=k["KeyId"])["KeyRotationEnabled"] is False
    expect_error("ValidationException", kms.enable_key_rotation,
                 KeyId=k["KeyId"], RotationPeriodInDays=10)


def test_generate_random(kms):
    assert len(kms.generate_random(NumberOfBytes=64)["Plaintext"]) == 64
    expect_error("ValidationException", kms.generate_random, NumberOfBytes=2000)


def test_shared_credentials_file_works_as_client_profile(server, monkeypatch):
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", server["cred_path"])
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    session = boto3.session.Session(region_name=REGION)
    client = session.client("kms", endpoint_url=server["url"], config=CONFIG)
    assert "Keys" in client.list_keys()


def test_authentication_errors(server):
    bad_secret = make_client(server, secret_key="wrong" * 8)
    expect_error("InvalidSignatureException", bad_secret.list_keys)
    unknown = make_client(server, access_key="AKIAUNKNOWNUNKNOWN00")
    expect_error("UnrecognizedClientException", unknown.list_keys)


def test_clock_skew_over_15_minutes_is_refused(server, monkeypatch):
    skewed = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: skewed)
    err = expect_error("InvalidSignatureException", make_client(server).list_keys)
    assert "Signature expired" in err.response["Error"]["Message"]


def signed_post(server, target, body):
    req = AWSRequest(method="POST", url=server["url"] + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target})
    SigV4Auth(Credentials(server["access_key"], server["secret_key"]), "kms", REGION).add_auth(req)
    return raw_post(server["url"] + "/", body, dict(req.headers.items()))


def raw_post(url, body, headers):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_hostile_input_gets_400_json_and_server_keeps_serving(server, kms):
    cases = [
        ("TrentService.Decrypt", b"{not json", "SerializationException"),
        ("TrentService.Decrypt", b'{"CiphertextBlob": "%%%"}', "SerializationException"),
        ("TrentService.Encrypt", b"{}", "ValidationException"),
        ("TrentService.Nope", b"{}", "UnknownOperationException"),
    ]
    for target, body, code in cases:
        status, answer = signed_post(server, target, body)
        assert (status, answer["__type"]) == (400, code), (target, body, answer)
    status, answer = raw_post(server["url"] + "/", b" " * (100 << 20), {
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.Encrypt"})
    assert status == 400 and "exceeds" in answer["message"], answer
    status, answer = raw_post(server["url"] + "/", b"{}", {
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
    assert answer["__type"] == "MissingAuthenticationTokenException"
    assert "Keys" in kms.list_keys()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_audit_log_chain_verifies_independently_and_has_no_plaintext(server, kms):
    k = new_key(kms)
    dk = kms.generate_data_key(KeyId=k["KeyId"], KeySpec="AES_256",
                               EncryptionContext={"audit": "yes"})
    kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"audit": "yes"})
    unknown = make_client(server, access_key="AKIAUNKNOWNUNKNOWN01")
    expect_error("UnrecognizedClientException", unknown.list_keys)
    text = server["audit"].read_text()
    assert base64.b64encode(dk["Plaintext"]).decode() not in text
    assert dk["Plaintext"].hex() not in text
    prev = "0" * 64
    records = [json.loads(line) for line in text.splitlines()]
    for rec in records:
        assert rec["prev_hash"] == prev
        body = {k: v for k, v in rec.items() if k != "hash"}
        assert hashlib.sha256(canonical(body).encode()).hexdigest() == rec["hash"]
        prev = rec["hash"]
    names = [r["eventName"] for r in records]
    assert "GenerateDataKey" in names and "Decrypt" in names
    decrypt = [r for r in records if r["eventName"] == "Decrypt" and "errorCode" not in r][-1]
    assert decrypt["requestParameters"]["encryptionContext"] == {"audit": "yes"}
    assert decrypt["resources"][0]["ARN"] == k["Arn"]
    assert decrypt["userIdentity"]["accessKeyId"] == server["access_key"]
    assert any(r.get("errorCode") == "UnrecognizedClientException" for r in records)


def test_restricted_access_key_gets_access_denied(tmp_path):
    creds = tmp_path / "creds.ini"
    creds.write_text(
        "[default]\naws_access_key_id = AKIAFULLACCESS000001\n"
        "aws_secret_access_key = full/secret/full/secret/full/secret/0001\n"
        "[mount]\naws_access_key_id = AKIADECRYPTONLY00001\n"
        "aws_secret_access_key = mount/secret/mount/secret/mount/secret/01\n"
        "kms_allowed_operations = Decrypt, GenerateDataKey, DescribeKey\n"
    )
    proc, info = start_server(tmp_path, "--credentials", str(creds))
    try:
        assert info["cred_path"] == str(creds)
        admin = make_client(info)
        key = new_key(admin)
        mount = make_client(info, "AKIADECRYPTONLY00001",
                            "mount/secret/mount/secret/mount/secret/01")
        dk = mount.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")
        assert mount.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
        err = expect_error("AccessDeniedException", mount.schedule_key_deletion,
                           KeyId=key["KeyId"])
        assert "kms:ScheduleKeyDeletion" in err.response["Error"]["Message"]
        expect_error("AccessDeniedException", mount.create_key)
    finally:
        stop_server(proc)

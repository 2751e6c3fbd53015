"""boto3 against `kmsfs kms serve --tls`: it trusts the CA the server made (named as
AWS_CA_BUNDLE names it), works through a whole data-key round, and a request it signed,
sent again later, is refused as a replay. Needs KMSFS_BIN; scripts/test.sh sets it.
"""

import configparser
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import SSLError

REGION = "us-east-1"
CONFIG = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    binary = os.environ.get("KMSFS_BIN")
    if not binary:
        pytest.skip("KMSFS_BIN is not set")
    tmp = tmp_path_factory.mktemp("kms-tls")
    proc = subprocess.Popen(
        [binary, "kms", "serve", "--listen", "127.0.0.1:0", "--tls",
         "--state", str(tmp / "state.json")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("listening on https://127.0.0.1:"), first
        cred_path = proc.stdout.readline().strip()[len("credentials: "):].split(" ")[0]
        third = proc.stdout.readline().strip()
        assert third.startswith("ca bundle: ") and "AWS_CA_BUNDLE=" in third, third
        ca = third[len("ca bundle: "):].split(" ")[0]
        ini = configparser.ConfigParser()
        ini.read(cred_path)
        yield {
            "url": first[len("listening on "):],
            "ca": ca,
            "access_key": ini["default"]["aws_access_key_id"],
            "secret_key": ini["default"]["aws_secret_access_key"],
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def client(server, verify):
    return boto3.client(
        "kms", endpoint_url=server["url"], region_name=REGION, config=CONFIG, verify=verify,
        aws_access_key_id=server["access_key"], aws_secret_access_key=server["secret_key"],
    )


def test_boto3_over_https_with_the_servers_ca(tls_server):
    kms = client(tls_server, tls_server["ca"])
    arn = kms.create_key(Description="over TLS")["KeyMetadata"]["Arn"]
    ctx = {"purpose": "https"}
    made = kms.generate_data_key(KeyId=arn, KeySpec="AES_256", EncryptionContext=ctx)
    back = kms.decrypt(CiphertextBlob=made["CiphertextBlob"], EncryptionContext=ctx)
    assert back["Plaintext"] == made["Plaintext"] and back["KeyId"] == arn


def test_the_servers_certificate_is_not_trusted_without_its_ca(tls_server):
    with pytest.raises(SSLError):
        client(tls_server, "/etc/ssl/certs/ca-certificates.crt").list_keys()


def test_a_request_sent_again_later_is_refused(tls_server):
    body = b'{"Limit": 7}'
    req = AWSRequest(method="POST", url=tls_server["url"] + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
    creds = Credentials(tls_server["access_key"], tls_server["secret_key"])
    SigV4Auth(creds, "kms", REGION).add_auth(req)
    headers = dict(req.headers.items())
    context = ssl.create_default_context(cafile=tls_server["ca"])

    def send():
        request = urllib.request.Request(tls_server["url"] + "/", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, context=context) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert send()[0] == 200
    time.sleep(2.5)
    status, answer = send()
    assert (status, answer["__type"]) == (400, "InvalidSignatureException"), answer
    assert "replay" in answer["message"]

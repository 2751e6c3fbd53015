"""boto3 against `kmsfs kms serve` with several principals (issue 23): key policies,
the lockout safety check, grants and grant tokens, tags, key descriptions, rotation
history, and the audit log naming each principal by ARN.

The credentials file has a `default`, a key administrator and a key user section, as in
AWS's KMS lab. Needs KMSFS_BIN (the kmsfs binary); scripts/test.sh sets it.
"""

import json

import pytest

from test_kms_boto3 import REGION, expect_error, make_client, start_server, stop_server

ACCOUNT = "111122223333"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
ADMIN = f"arn:aws:iam::{ACCOUNT}:user/key-admin"
USER = f"arn:aws:iam::{ACCOUNT}:role/KeyUser"

CREDENTIALS = f"""[default]
aws_access_key_id = AKIADEFAULTDEFAULT01
aws_secret_access_key = default-secret
[key-admin]
aws_access_key_id = AKIAKEYADMINKEYADMIN
aws_secret_access_key = admin-secret
[key-user]
aws_access_key_id = AKIAKEYUSERKEYUSER01
aws_secret_access_key = user-secret
principal_arn = {USER}
"""


def lab_policy():
    """The key policy of AWS's KMS lab: administrators manage, users use."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Allow access for Key Administrators", "Effect": "Allow",
             "Principal": {"AWS": ADMIN},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*",
                        "kms:Put*", "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*",
                        "kms:Delete*", "kms:TagResource", "kms:UntagResource",
                        "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
                        "kms:RotateKeyOnDemand"],
             "Resource": "*"},
            {"Sid": "Allow use of the key", "Effect": "Allow", "Principal": {"AWS": [USER]},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*",
                        "kms:GenerateDataKey*", "kms:DescribeKey"],
             "Resource": "*"},
        ],
    })


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kms-policies")
    cred = tmp / "credentials"
    cred.write_text(CREDENTIALS)
    proc, info = start_server(tmp, "--credentials", str(cred))
    try:
        yield info
    finally:
        stop_server(proc)


@pytest.fixture()
def admin(server):
    return make_client(server, "AKIAKEYADMINKEYADMIN", "admin-secret")


@pytest.fixture()
def user(server):
    return make_client(server, "AKIAKEYUSERKEYUSER01", "user-secret")


@pytest.fixture()
def lab_key(admin):
    return admin.create_key(Policy=lab_policy(), Description="lab")["KeyMetadata"]["Arn"]


def test_default_policy_and_policy_names(admin, user):
    arn = admin.create_key()["KeyMetadata"]["Arn"]
    policy = json.loads(admin.get_key_policy(KeyId=arn, PolicyName="default")["Policy"])
    assert policy["Statement"] == [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                                    "Principal": {"AWS": ROOT}, "Action": "kms:*",
                                    "Resource": "*"}]
    assert user.list_key_policies(KeyId=arn)["PolicyNames"] == ["default"]
    blob = user.encrypt(KeyId=arn, Plaintext=b"x")["CiphertextBlob"]
    assert admin.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"


def test_lab_policy_user_reads_admin_manages_but_cannot_read(admin, user, lab_key):
    ctx = {"kmsfs:volume-id": "v1"}
    dk = user.generate_data_key(KeyId=lab_key, KeySpec="AES_256", EncryptionContext=ctx)
    got = user.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    assert got["Plaintext"] == dk["Plaintext"]
    e = expect_error("AccessDeniedException", admin.decrypt,
                     CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    assert e.response["Error"]["Message"] == (
        f"User: {ADMIN} is not authorized to perform: kms:Decrypt on resource: {lab_key} "
        "because no resource-based policy allows the kms:Decrypt action")
    e = expect_error("AccessDeniedException", user.disable_key, KeyId=lab_key)
    assert USER in e.response["Error"]["Message"]
    expect_error("AccessDeniedException", user.put_key_policy, KeyId=lab_key,
                 PolicyName="default", Policy=lab_policy())
    admin.put_key_policy(KeyId=lab_key, PolicyName="default", Policy=lab_policy())
    assert json.loads(admin.get_key_policy(KeyId=lab_key)["Policy"]) == json.loads(lab_policy())
    admin.disable_key(KeyId=lab_key)
    admin.enable_key(KeyId=lab_key)


def test_deny_and_conditions(admin, user):
    policy = json.dumps({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": USER}, "Action": ["kms:Decrypt"],
         "Resource": "*",
         "Condition": {"StringNotLike": {"kms:EncryptionContext:team": "blue*"}}},
    ]})
    arn = admin.create_key(Policy=policy)["KeyMetadata"]["Arn"]
    blue = admin.encrypt(KeyId=arn, Plaintext=b"b", EncryptionContext={"team": "blue-1"})
    red = admin.encrypt(KeyId=arn, Plaintext=b"r", EncryptionContext={"team": "red"})
    user.decrypt(CiphertextBlob=blue["CiphertextBlob"], EncryptionContext={"team": "blue-1"})
    e = expect_error("AccessDeniedException", user.decrypt,
                     CiphertextBlob=red["CiphertextBlob"], EncryptionContext={"team": "red"})
    assert e.response["Error"]["Message"].endswith(
        "with an explicit deny in a resource-based policy")


def test_lockout_check_and_malformed_policies(admin, lab_key):
    only_user = json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": USER},
                                            "Action": "kms:*", "Resource": "*"}]})
    e = expect_error("MalformedPolicyDocumentException", admin.put_key_policy,
                     KeyId=lab_key, PolicyName="default", Policy=only_user)
    assert "will not allow you to update the key policy in the future" in str(e)
    expect_error("MalformedPolicyDocumentException", admin.create_key, Policy=only_user)
    for bad in ["{", '{"Statement": []}',
                '{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}']:
        expect_error("MalformedPolicyDocumentException", admin.put_key_policy,
                     KeyId=lab_key, PolicyName="default", Policy=bad)
    admin.put_key_policy(KeyId=lab_key, PolicyName="default", Policy=only_user,
                         BypassPolicyLockoutSafetyCheck=True)
    expect_error("AccessDeniedException", admin.describe_key, KeyId=lab_key)


def test_grants_tokens_retire_and_revoke(admin, user, server):
    arn = admin.create_key(Policy=json.dumps({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*",
         "Resource": "*"}]}))["KeyMetadata"]["Arn"]
    ctx = {"team": "blue"}
    blob = admin.encrypt(KeyId=arn, Plaintext=b"s", EncryptionContext=ctx)["CiphertextBlob"]
    expect_error("AccessDeniedException", user.decrypt, CiphertextBlob=blob,
                 EncryptionContext=ctx)
    g = admin.create_grant(KeyId=arn, GranteePrincipal=USER, RetiringPrincipal=ADMIN,
                           Operations=["Decrypt", "GenerateDataKey"], Name="lab",
                           Constraints={"EncryptionContextSubset": ctx})
    assert user.decrypt(CiphertextBlob=blob, EncryptionContext=ctx,
                        GrantTokens=[g["GrantToken"]])["Plaintext"] == b"s"
    user.generate_data_key(KeyId=arn, KeySpec="AES_256", EncryptionContext=ctx)
    expect_error("AccessDeniedException", user.generate_data_key, KeyId=arn,
                 KeySpec="AES_256", EncryptionContext={"team": "red"})
    expect_error("AccessDeniedException", user.encrypt, KeyId=arn, Plaintext=b"x",
                 EncryptionContext=ctx)
    expect_error("InvalidGrantTokenException", user.decrypt, CiphertextBlob=blob,
                 EncryptionContext=ctx, GrantTokens=["bogus"])
    grants = admin.list_grants(KeyId=arn)["Grants"]
    assert [(x["GrantId"], x["GranteePrincipal"], x["Name"]) for x in grants] == [
        (g["GrantId"], USER, "lab")]
    assert grants[0]["Constraints"] == {"EncryptionContextSubset": ctx}
    retirable = admin.list_retirable_grants(RetiringPrincipal=ADMIN)["Grants"]
    assert g["GrantId"] in [x["GrantId"] for x in retirable]
    admin.retire_grant(GrantToken=g["GrantToken"])
    expect_error("AccessDeniedException", user.decrypt, CiphertextBlob=blob,
                 EncryptionContext=ctx)
    g2 = admin.create_grant(KeyId=arn, GranteePrincipal=USER, Operations=["Decrypt"])
    user.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)
    admin.revoke_grant(KeyId=arn, GrantId=g2["GrantId"])
    expect_error("AccessDeniedException", user.decrypt, CiphertextBlob=blob,
                 EncryptionContext=ctx)
    expect_error("NotFoundException", admin.revoke_grant, KeyId=arn, GrantId=g2["GrantId"])
    expect_error("ValidationException", admin.create_grant, KeyId=arn,
                 GranteePrincipal=USER, Operations=["Teleport"])


def test_tags_description_and_rotations(admin, user, lab_key):
    admin.tag_resource(KeyId=lab_key, Tags=[{"TagKey": "team", "TagValue": "blue"},
                                            {"TagKey": "env", "TagValue": "ci"}])
    tags = admin.list_resource_tags(KeyId=lab_key)["Tags"]
    assert tags == [{"TagKey": "env", "TagValue": "ci"}, {"TagKey": "team", "TagValue": "blue"}]
    admin.untag_resource(KeyId=lab_key, TagKeys=["env"])
    assert admin.list_resource_tags(KeyId=lab_key)["Tags"] == [
        {"TagKey": "team", "TagValue": "blue"}]
    expect_error("TagException", admin.tag_resource, KeyId=lab_key,
                 Tags=[{"TagKey": "aws:reserved", "TagValue": "x"}])
    expect_error("AccessDeniedException", user.tag_resource, KeyId=lab_key,
                 Tags=[{"TagKey": "a", "TagValue": "b"}])
    made = admin.create_key(Tags=[{"TagKey": "k", "TagValue": "v"}])["KeyMetadata"]
    assert admin.list_resource_tags(KeyId=made["KeyId"])["Tags"] == [
        {"TagKey": "k", "TagValue": "v"}]
    admin.update_key_description(KeyId=lab_key, Description="new words")
    assert admin.describe_key(KeyId=lab_key)["KeyMetadata"]["Description"] == "new words"
    assert admin.list_key_rotations(KeyId=lab_key)["Rotations"] == []
    admin.rotate_key_on_demand(KeyId=lab_key)
    rotations = admin.list_key_rotations(KeyId=lab_key)["Rotations"]
    assert [(r["KeyId"], r["RotationType"]) for r in rotations] == [(lab_key, "ON_DEMAND")]


def test_audit_log_names_principals(server, admin, user, lab_key):
    expect_error("AccessDeniedException", admin.decrypt,
                 CiphertextBlob=user.encrypt(KeyId=lab_key, Plaintext=b"a")["CiphertextBlob"])
    records = [json.loads(line) for line in server["audit"].read_text().splitlines()]
    denied = [r for r in records if r["eventName"] == "Decrypt"
              and r.get("errorCode") == "AccessDeniedException"][-1]
    assert denied["userIdentity"]["arn"] == ADMIN
    assert denied["userIdentity"]["userName"] == "key-admin"
    assert denied["userIdentity"]["accessKeyId"] == "AKIAKEYADMINKEYADMIN"
    assert denied["userIdentity"]["accountId"] == ACCOUNT
    encrypted = [r for r in records if r["eventName"] == "Encrypt"][-1]
    assert encrypted["userIdentity"]["arn"] == USER
    assert encrypted["userIdentity"]["type"] == "Role"
    assert REGION == encrypted["awsRegion"]

"""Deployment (components/aws/deploy.py) against moto, a stand-in for AWS's control plane.

AWS itself cannot be reached from here, so moto answers SageMaker and Application Auto Scaling
in process. Two gaps of moto 5.2 are bridged and named where they are: its instance-type list
predates g6 instances (these tests deploy ``ml.g4dn.xlarge``; the ``ml.g6.4xlarge`` default is
checked in the dry-run output), and it has no ``UpdateEndpoint`` (a botocore hook applies the
update to moto's endpoint record).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from components.aws import deploy

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/live-captions:1"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-exec"
TYPE = "ml.g4dn.xlarge"  # moto's list of instance types has no g6


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


def run(argv: list[str]) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = deploy.main(
        argv,
        deployer=deploy.Deployer(
            region="us-east-1",
            dry_run="--dry-run" in argv,
            poll_seconds=0,
            timeout_seconds=5,
            out=lines.append,
        ),
    )
    return code, lines


def create_args(name: str = "captions", *extra: str) -> list[str]:
    return [
        "create",
        "--name",
        name,
        "--image",
        IMAGE,
        "--role",
        ROLE,
        "--instance-type",
        TYPE,
        *extra,
    ]


def test_create_makes_model_config_endpoint_and_autoscaling(aws: None) -> None:
    code, _ = run(
        create_args(
            "captions",
            "--autoscale",
            "--min-instances",
            "1",
            "--max-instances",
            "4",
            "--scale-target",
            "6",
            "--env",
            "SM_VLLM_MAX_MODEL_LEN=30000",
        )
    )
    assert code == 0
    sm = boto3.client("sagemaker", region_name="us-east-1")
    endpoint = sm.describe_endpoint(EndpointName="captions")
    assert endpoint["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    assert variant["VariantName"] == "AllTraffic"
    assert variant["InstanceType"] == TYPE
    assert variant["InitialInstanceCount"] == 1
    model = sm.describe_model(ModelName=variant["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert model["ExecutionRoleArn"] == ROLE
    env = container["Environment"]
    assert env["ENGINE"] == "vllm"
    assert env["SERVED_MODEL_NAME"] == "live-captions"  # what the client names by default
    assert env["SM_VLLM_MODEL"] == deploy.DEFAULT_MODEL_ID
    assert env["SM_VLLM_MAX_MODEL_LEN"] == "30000"  # --env overrides the default 45000
    assert json.loads(env["SM_VLLM_COMPILATION_CONFIG"]) == {"cudagraph_mode": "PIECEWISE"}

    aas = boto3.client("application-autoscaling", region_name="us-east-1")
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [
        ("endpoint/captions/variant/AllTraffic", 1, 4)
    ]
    assert targets[0]["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    (policy,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert tracking["TargetValue"] == 6
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerVariantConcurrentRequestsPerModelHighResolution"
    )


def test_create_refuses_an_existing_endpoint(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(create_args())[0] == 0
    code, lines = run(create_args())
    assert code == 1
    assert "already exists" in capsys.readouterr().err
    assert not any("create_model" in line for line in lines)  # nothing was created


@pytest.fixture
def moto_update_endpoint(aws: None) -> Iterator[list[dict[str, Any]]]:
    """moto has no UpdateEndpoint: apply it to moto's endpoint record, as AWS would."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    calls: list[dict[str, Any]] = []

    def update(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        request = json.loads(params["body"])  # the serialized request, as sent to AWS
        calls.append(request)
        backend = sagemaker_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
        endpoint = backend.endpoints[request["EndpointName"]]
        endpoint.endpoint_config_name = request["EndpointConfigName"]

        class Http:
            status_code = 200

        return Http(), {"EndpointArn": endpoint.arn}

    original = deploy.Deployer.client

    def client(self: deploy.Deployer, service: str) -> Any:
        made = original(self, service)
        if service == "sagemaker":
            made.meta.events.register(
                "before-call.sagemaker.UpdateEndpoint", update, unique_id="moto-update-endpoint"
            )
        return made

    deploy.Deployer.client = client  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        deploy.Deployer.client = original  # type: ignore[method-assign]


def test_update_switches_to_a_new_model_and_removes_the_old(
    moto_update_endpoint: list[dict[str, Any]],
) -> None:
    assert run(create_args())[0] == 0
    sm = boto3.client("sagemaker", region_name="us-east-1")
    old_config = sm.describe_endpoint(EndpointName="captions")["EndpointConfigName"]
    new_image = IMAGE.replace(":1", ":2")
    code, _ = run(
        [
            "update",
            "--name",
            "captions",
            "--image",
            new_image,
            "--role",
            ROLE,
            "--instance-type",
            TYPE,
            "--instance-count",
            "2",
        ]
    )
    assert code == 0
    (call,) = moto_update_endpoint
    assert call["EndpointName"] == "captions"
    new_config = sm.describe_endpoint(EndpointName="captions")["EndpointConfigName"]
    assert new_config == call["EndpointConfigName"] != old_config
    variant = sm.describe_endpoint_config(EndpointConfigName=new_config)["ProductionVariants"][0]
    assert variant["InitialInstanceCount"] == 2
    assert sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]["Image"] == (
        new_image
    )
    # The previous configuration and model are gone; only the serving ones remain.
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == [
        new_config
    ]
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == [variant["ModelName"]]


def test_update_of_a_missing_endpoint_creates_nothing(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(["update", "--name", "nothing", "--image", IMAGE, "--role", ROLE])
    assert code == 1
    assert "does not exist: use `create`" in capsys.readouterr().err
    assert boto3.client("sagemaker", region_name="us-east-1").list_models()["Models"] == []


def test_a_failed_step_leaves_no_orphans(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    # moto rejects the default g6 type at CreateEndpointConfig: the model made before goes too.
    code, _ = run(["create", "--name", "captions", "--image", IMAGE, "--role", ROLE])
    assert code == 1
    assert "ValidationException" in capsys.readouterr().err
    sm = boto3.client("sagemaker", region_name="us-east-1")
    assert sm.list_models()["Models"] == []
    assert sm.list_endpoints()["Endpoints"] == []


def test_delete_removes_scaling_endpoint_config_and_model(aws: None) -> None:
    assert run(create_args("captions", "--autoscale"))[0] == 0
    code, lines = run(["delete", "--name", "captions"])
    assert code == 0
    assert lines[0].startswith("application-autoscaling.delete_scaling_policy")
    sm = boto3.client("sagemaker", region_name="us-east-1")
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    aas = boto3.client("application-autoscaling", region_name="us-east-1")
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []


def test_status_reports_the_endpoint(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(create_args("captions", "--autoscale", "--max-instances", "3"))[0] == 0
    capsys.readouterr()
    assert run(["status", "--name", "captions"])[0] == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "InService"
    assert info["instance_type"] == TYPE
    assert info["autoscaling"] == {"min": 1, "max": 3}
    assert info["runtime_url"] == "https://runtime.sagemaker.us-east-1.amazonaws.com:8443"
    assert run(["status", "--name", "missing"])[0] == 1


def test_wait_reports_sagemakers_failure_reason(aws: None) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    assert run(create_args("captions", "--no-wait"))[0] == 0
    endpoint = sagemaker_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].endpoints["captions"]
    endpoint.endpoint_status = "Failed"
    endpoint.failure_reason = "The primary container did not pass the ping health check."
    deployer = deploy.Deployer(region="us-east-1", poll_seconds=0, out=lambda _: None)
    with pytest.raises(deploy.DeployError, match="did not pass the ping health check"):
        deployer.wait_in_service("captions")


def test_dry_run_prints_every_request_and_calls_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No credentials and no AWS at all: a dry run must not need either.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    lines: list[str] = []
    deployer = deploy.Deployer(region="eu-west-1", dry_run=True, out=lines.append)
    code = deploy.main(
        [
            "create",
            "--name",
            "captions",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--autoscale",
            "--dry-run",
        ],
        deployer=deployer,
    )
    assert code == 0
    assert deployer._clients == {}  # no boto3 client was even built
    calls = [
        (line.split(" ", 1)[0], json.loads(line.split(" ", 1)[1]))
        for line in lines
        if not line.startswith("endpoint ")
    ]
    assert [name for name, _ in calls] == [
        "sagemaker.create_model",
        "sagemaker.create_endpoint_config",
        "sagemaker.create_endpoint",
        "application-autoscaling.register_scalable_target",
        "application-autoscaling.put_scaling_policy",
    ]
    variant = calls[1][1]["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g6.4xlarge"
    assert calls[0][1]["PrimaryContainer"]["Environment"]["SM_VLLM_MAX_MODEL_LEN"] == "45000"
    assert calls[2][1]["EndpointName"] == "captions"


def test_arguments_are_checked_before_any_call(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        deploy.main(
            ["create", "--name", "bad_name!", "--image", IMAGE, "--role", ROLE, "--dry-run"]
        )
    assert "--name must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        deploy.main(
            [
                "create",
                "--name",
                "ok",
                "--image",
                IMAGE,
                "--role",
                ROLE,
                "--env",
                "NOEQUALS",
                "--dry-run",
            ]
        )
    assert "KEY=VALUE" in capsys.readouterr().err

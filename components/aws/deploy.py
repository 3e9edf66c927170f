"""Deploy the container to a SageMaker AI real-time endpoint, with boto3.

    python -m components.aws.deploy create --name live-captions --image URI --role ARN
    python -m components.aws.deploy update --name live-captions --image URI --role ARN
    python -m components.aws.deploy status --name live-captions
    python -m components.aws.deploy delete --name live-captions

``create`` makes a model (image, execution role, environment), an endpoint configuration (one
production variant ``AllTraffic``: instance type and count) and the endpoint, waits until it is
``InService`` and, when asked, registers target-tracking autoscaling on the variant's instance
count. ``update`` makes a new model and configuration and switches the endpoint to them
(SageMaker replaces instances without downtime), then removes the old ones. ``delete`` removes
the scaling policy, the endpoint, its configuration and its model. ``--dry-run`` prints every
request it would make, as JSON, and calls nothing.

Names: the endpoint is ``--name``; models and configurations are ``NAME-YYYYmmdd-HHMMSS`` so an
update never collides with what is serving.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from components.backends.sagemaker.client import DEFAULT_MODEL as SERVED_MODEL_NAME

VARIANT = "AllTraffic"
DEFAULT_INSTANCE_TYPE = "ml.g6.4xlarge"
DEFAULT_MODEL_ID = "mistralai/Voxtral-Mini-4B-Realtime-2602"
DEFAULT_ENVIRONMENT: dict[str, str] = {
    "ENGINE": "vllm",
    "SERVED_MODEL_NAME": SERVED_MODEL_NAME,
    "SM_VLLM_MODEL": DEFAULT_MODEL_ID,
    "SM_VLLM_MAX_MODEL_LEN": "45000",
    "SM_VLLM_TOKENIZER_MODE": "mistral",
    "SM_VLLM_COMPILATION_CONFIG": '{"cudagraph_mode": "PIECEWISE"}',
}
"""The container's environment for the GPU engine (vLLM + Voxtral Realtime), ~1 h of audio.

The served model name is the one the SageMaker client names by default, whatever the engine."""

SCALE_METRICS = {
    "concurrency": "SageMakerVariantConcurrentRequestsPerModelHighResolution",
    "invocations": "SageMakerVariantInvocationsPerInstance",
}
"""Predefined target-tracking metrics. A caption session is one long request, so open streams
(concurrency) track load; invocations per minute only count session starts."""

TERMINAL_FAILED = {"Failed", "RollingBack", "OutOfService"}


class DeployError(Exception):
    """A deployment step failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Autoscaling:
    """Target tracking on the variant's instance count."""

    min_instances: int = 1
    max_instances: int = 2
    target: float = 8.0
    """Target metric value per instance (open streams for ``concurrency``)."""
    metric: str = "concurrency"
    scale_in_cooldown: int = 600
    scale_out_cooldown: int = 120

    def __post_init__(self) -> None:
        if self.metric not in SCALE_METRICS:
            raise ValueError(f"scale metric must be one of {sorted(SCALE_METRICS)}")
        if not 0 < self.min_instances <= self.max_instances:
            raise ValueError("need 0 < --min-instances <= --max-instances")
        if self.target <= 0:
            raise ValueError("--scale-target must be positive")


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What to deploy."""

    name: str
    image: str = ""
    role: str = ""
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    environment: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENVIRONMENT))
    startup_timeout: int = 1200
    """Seconds SageMaker waits for the container's first healthy ``/ping`` (model load)."""
    autoscaling: Autoscaling | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 47 or not _valid_name(self.name):
            raise ValueError(
                "--name must be 1-47 characters of letters, digits and hyphens, starting with "
                "a letter or digit (model and configuration names add a 16-character suffix)"
            )
        if self.instance_count < 1:
            raise ValueError("--instance-count must be at least 1")

    def require_image_and_role(self) -> None:
        if not self.image:
            raise ValueError("--image is required (an ECR image URI)")
        if not self.role.startswith("arn:"):
            raise ValueError("--role is required: the ARN of an IAM role SageMaker can assume")


def _valid_name(name: str) -> bool:
    return name[0].isalnum() and all(c.isalnum() or c == "-" for c in name)


def versioned(name: str, now: datetime.datetime | None = None, *, avoid: str | None = None) -> str:
    """``NAME-YYYYmmdd-HHMMSS`` (UTC), for models and endpoint configurations.

    ``avoid`` is the name in use (an update within the same second gets the next second).
    """
    now = now or datetime.datetime.now(datetime.UTC)
    out = f"{name}-{now.strftime('%Y%m%d-%H%M%S')}"
    if out == avoid:
        out = f"{name}-{(now + datetime.timedelta(seconds=1)).strftime('%Y%m%d-%H%M%S')}"
    return out


def scaling_resource_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}/variant/{VARIANT}"


# --------------------------------------------------------------------------- requests (pure)


def _tags(spec: EndpointSpec) -> list[dict[str, str]]:
    tags = {"project": "live-captions", **spec.tags}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def model_request(spec: EndpointSpec, model_name: str) -> dict[str, Any]:
    return {
        "ModelName": model_name,
        "ExecutionRoleArn": spec.role,
        "PrimaryContainer": {"Image": spec.image, "Environment": dict(spec.environment)},
        "Tags": _tags(spec),
    }


def endpoint_config_request(
    spec: EndpointSpec, config_name: str, model_name: str
) -> dict[str, Any]:
    return {
        "EndpointConfigName": config_name,
        "ProductionVariants": [
            {
                "VariantName": VARIANT,
                "ModelName": model_name,
                "InstanceType": spec.instance_type,
                "InitialInstanceCount": spec.instance_count,
                "ContainerStartupHealthCheckTimeoutInSeconds": spec.startup_timeout,
            }
        ],
        "Tags": _tags(spec),
    }


def scalable_target_request(endpoint: str, scaling: Autoscaling) -> dict[str, Any]:
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": scaling_resource_id(endpoint),
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "MinCapacity": scaling.min_instances,
        "MaxCapacity": scaling.max_instances,
    }


def scaling_policy_request(endpoint: str, scaling: Autoscaling) -> dict[str, Any]:
    return {
        "PolicyName": f"{endpoint}-target-tracking",
        "ServiceNamespace": "sagemaker",
        "ResourceId": scaling_resource_id(endpoint),
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": scaling.target,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": SCALE_METRICS[scaling.metric]
            },
            "ScaleInCooldown": scaling.scale_in_cooldown,
            "ScaleOutCooldown": scaling.scale_out_cooldown,
        },
    }


# --------------------------------------------------------------------------- running


Call = Callable[..., dict[str, Any]]


class Deployer:
    """Runs the steps against boto3 clients, or only prints them (``dry_run``)."""

    def __init__(
        self,
        *,
        region: str | None = None,
        dry_run: bool = False,
        poll_seconds: float = 30.0,
        timeout_seconds: float = 3600.0,
        out: Callable[[str], None] = print,
        session: Any = None,
    ) -> None:
        self.dry_run = dry_run
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self.out = out
        self._region = region
        self._session = session
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3

            session = self._session or boto3.session.Session(region_name=self._region)
            self._clients[service] = session.client(service, region_name=self._region)
        return self._clients[service]

    def call(self, service: str, operation: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """One AWS call, printed first; in a dry run, only printed."""
        self.out(f"{service}.{operation} {json.dumps(request, sort_keys=True)}")
        if self.dry_run:
            return {}
        method: Call = getattr(self.client(service), operation)
        return method(**request)

    def _describe_endpoint(self, name: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.client("sagemaker").describe_endpoint(EndpointName=name)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise

    # ------------------------------------------------------------------ steps

    def create(self, spec: EndpointSpec, *, wait: bool = True) -> None:
        spec.require_image_and_role()
        if not self.dry_run and self._describe_endpoint(spec.name) is not None:
            raise DeployError(
                f"endpoint {spec.name} already exists: use `update` to change it, or `delete` first"
            )
        config_name = self._create_model_and_config(spec)
        with self._undo_on_failure(config_name):
            self.call(
                "sagemaker",
                "create_endpoint",
                {"EndpointName": spec.name, "EndpointConfigName": config_name, "Tags": _tags(spec)},
            )
        if wait:
            self.wait_in_service(spec.name)
        if spec.autoscaling is not None:
            self.autoscale(spec.name, spec.autoscaling)

    def update(self, spec: EndpointSpec, *, wait: bool = True, keep_old: bool = False) -> None:
        spec.require_image_and_role()
        old_config: str | None = None
        if not self.dry_run:
            current = self._describe_endpoint(spec.name)
            if current is None:
                raise DeployError(f"endpoint {spec.name} does not exist: use `create`")
            old_config = current["EndpointConfigName"]
        config_name = self._create_model_and_config(spec, in_use=old_config)
        with self._undo_on_failure(config_name):
            self.call(
                "sagemaker",
                "update_endpoint",
                {
                    "EndpointName": spec.name,
                    "EndpointConfigName": config_name,
                    "RetainAllVariantProperties": False,
                },
            )
        if not wait:
            return
        self.wait_in_service(spec.name)
        if spec.autoscaling is not None:
            self.autoscale(spec.name, spec.autoscaling)
        if old_config and not keep_old:
            self._delete_config_and_models(old_config)

    def _create_model_and_config(self, spec: EndpointSpec, in_use: str | None = None) -> str:
        """A new model and endpoint configuration, both named ``NAME-<UTC time>``."""
        model_name = config_name = versioned(spec.name, avoid=in_use)
        self.call("sagemaker", "create_model", model_request(spec, model_name))
        with self._undo_on_failure(None, model_name):
            self.call(
                "sagemaker",
                "create_endpoint_config",
                endpoint_config_request(spec, config_name, model_name),
            )
        return config_name

    @contextlib.contextmanager
    def _undo_on_failure(self, config_name: str | None, model_name: str | None = None) -> Any:
        """Delete what this run created when a later step fails (no orphans left behind)."""
        try:
            yield
        except BaseException:
            if not self.dry_run:
                with contextlib.suppress(Exception):
                    if config_name is not None:
                        self._delete_config_and_models(config_name)
                    elif model_name is not None:
                        self.call("sagemaker", "delete_model", {"ModelName": model_name})
            raise

    def autoscale(self, endpoint: str, scaling: Autoscaling) -> None:
        self.call(
            "application-autoscaling",
            "register_scalable_target",
            scalable_target_request(endpoint, scaling),
        )
        self.call(
            "application-autoscaling",
            "put_scaling_policy",
            scaling_policy_request(endpoint, scaling),
        )

    def remove_autoscaling(self, endpoint: str) -> None:
        resource = {
            "ServiceNamespace": "sagemaker",
            "ResourceId": scaling_resource_id(endpoint),
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        }
        if self.dry_run:
            self.call("application-autoscaling", "deregister_scalable_target", resource)
            return
        aas = self.client("application-autoscaling")
        targets = aas.describe_scalable_targets(
            ServiceNamespace="sagemaker", ResourceIds=[resource["ResourceId"]]
        )["ScalableTargets"]
        if not targets:
            return
        policies = aas.describe_scaling_policies(
            ServiceNamespace="sagemaker", ResourceId=resource["ResourceId"]
        )["ScalingPolicies"]
        for policy in policies:
            self.call(
                "application-autoscaling",
                "delete_scaling_policy",
                {**resource, "PolicyName": policy["PolicyName"]},
            )
        self.call("application-autoscaling", "deregister_scalable_target", resource)

    def delete(self, name: str, *, wait: bool = True) -> None:
        if self.dry_run:
            self.remove_autoscaling(name)
            self.call("sagemaker", "delete_endpoint", {"EndpointName": name})
            self.out("(the endpoint's configuration and model are deleted after it)")
            return
        current = self._describe_endpoint(name)
        if current is None:
            raise DeployError(f"endpoint {name} does not exist")
        self.remove_autoscaling(name)
        self.call("sagemaker", "delete_endpoint", {"EndpointName": name})
        if wait:
            self._wait_gone(name)
        self._delete_config_and_models(current["EndpointConfigName"])

    def _delete_config_and_models(self, config_name: str) -> None:
        from botocore.exceptions import ClientError

        try:
            config = self.client("sagemaker").describe_endpoint_config(
                EndpointConfigName=config_name
            )
        except ClientError as exc:
            if _is_missing(exc):
                return
            raise
        self.call("sagemaker", "delete_endpoint_config", {"EndpointConfigName": config_name})
        for variant in config.get("ProductionVariants", []):
            if variant.get("ModelName"):
                self.call("sagemaker", "delete_model", {"ModelName": variant["ModelName"]})

    def wait_in_service(self, name: str) -> dict[str, Any]:
        """Poll until ``InService``; raise with SageMaker's failure reason otherwise."""
        if self.dry_run:
            self.out(f"endpoint {name}: (a real run waits here until InService)")
            return {}
        deadline = time.monotonic() + self.timeout_seconds
        last = None
        while True:
            described = self._describe_endpoint(name)
            if described is None:
                raise DeployError(f"endpoint {name} disappeared while waiting for it")
            status = described["EndpointStatus"]
            if status != last:
                self.out(f"endpoint {name}: {status}")
                last = status
            if status == "InService":
                return described
            if status in TERMINAL_FAILED:
                reason = described.get("FailureReason", "no reason given")
                raise DeployError(f"endpoint {name} is {status}: {reason}")
            if time.monotonic() > deadline:
                raise DeployError(
                    f"endpoint {name} still {status} after {self.timeout_seconds:g} s"
                )
            time.sleep(self.poll_seconds)

    def _wait_gone(self, name: str) -> None:
        deadline = time.monotonic() + self.timeout_seconds
        while self._describe_endpoint(name) is not None:
            if time.monotonic() > deadline:
                raise DeployError(f"endpoint {name} still exists after {self.timeout_seconds:g} s")
            time.sleep(self.poll_seconds)
        self.out(f"endpoint {name}: deleted")

    def status(self, name: str) -> dict[str, Any]:
        """What the endpoint is: status, variant, instances, scaling, the runtime URL."""
        described = self._describe_endpoint(name)
        if described is None:
            raise DeployError(f"endpoint {name} does not exist in {self.region()}")
        config = self.client("sagemaker").describe_endpoint_config(
            EndpointConfigName=described["EndpointConfigName"]
        )
        variant = (config.get("ProductionVariants") or [{}])[0]
        running = (described.get("ProductionVariants") or [{}])[0]
        info: dict[str, Any] = {
            "endpoint": name,
            "status": described["EndpointStatus"],
            "config": described["EndpointConfigName"],
            "model": variant.get("ModelName"),
            "instance_type": variant.get("InstanceType"),
            "instances": running.get("CurrentInstanceCount", variant.get("InitialInstanceCount")),
            "runtime_url": f"https://runtime.sagemaker.{self.region()}.amazonaws.com:8443",
        }
        if described.get("FailureReason"):
            info["failure_reason"] = described["FailureReason"]
        targets = self.client("application-autoscaling").describe_scalable_targets(
            ServiceNamespace="sagemaker", ResourceIds=[scaling_resource_id(name)]
        )["ScalableTargets"]
        if targets:
            info["autoscaling"] = {
                "min": targets[0]["MinCapacity"],
                "max": targets[0]["MaxCapacity"],
            }
        return info

    def region(self) -> str:
        return self._region or self.client("sagemaker").meta.region_name


def _is_missing(exc: Any) -> bool:
    error = exc.response.get("Error", {})
    message = str(error.get("Message", ""))
    return error.get("Code") in ("ValidationException", "ValidationError") and (
        "Could not find" in message or "not found" in message.lower()
    )


# --------------------------------------------------------------------------- command line


def _env_pairs(values: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.aws.deploy",
        description="Create, update, inspect or delete the SageMaker AI endpoint.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", required=True, help="endpoint name")
        p.add_argument("--region", default=None, help="AWS region (default: AWS config)")
        p.add_argument("--dry-run", action="store_true", help="print the requests, call nothing")

    for command in ("create", "update"):
        p = sub.add_parser(command, help=f"{command} the endpoint")
        common(p)
        p.add_argument("--image", required=True, help="container image URI (ECR)")
        p.add_argument("--role", required=True, help="SageMaker execution role ARN")
        p.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
        p.add_argument("--instance-count", type=int, default=1)
        p.add_argument(
            "--engine", default="vllm", help="ENGINE inside the container (default vllm)"
        )
        p.add_argument("--model-id", default=DEFAULT_MODEL_ID, help="SM_VLLM_MODEL")
        p.add_argument(
            "--env",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="extra container environment, e.g. SM_VLLM_MAX_MODEL_LEN=45000",
        )
        p.add_argument(
            "--startup-timeout",
            type=int,
            default=1200,
            help="seconds to become healthy (default %(default)s)",
        )
        p.add_argument(
            "--autoscale", action="store_true", help="register target-tracking autoscaling"
        )
        p.add_argument("--min-instances", type=int, default=1)
        p.add_argument("--max-instances", type=int, default=2)
        p.add_argument("--scale-metric", choices=sorted(SCALE_METRICS), default="concurrency")
        p.add_argument(
            "--scale-target",
            type=float,
            default=8.0,
            help="target per instance: open streams (concurrency) or "
            "invocations per minute (default %(default)s)",
        )
        p.add_argument("--no-wait", action="store_true", help="do not wait for InService")
        if command == "update":
            p.add_argument(
                "--keep-old", action="store_true", help="keep the previous model and configuration"
            )
    p = sub.add_parser("status", help="show the endpoint")
    common(p)
    p = sub.add_parser("delete", help="delete the endpoint, its configuration and model")
    common(p)
    p.add_argument("--no-wait", action="store_true")
    return parser


def spec_from_args(args: argparse.Namespace) -> EndpointSpec:
    environment = dict(DEFAULT_ENVIRONMENT)
    environment["ENGINE"] = args.engine
    environment["SM_VLLM_MODEL"] = args.model_id
    if args.engine != "vllm":
        environment = {k: v for k, v in environment.items() if not k.startswith("SM_VLLM_")}
    environment.update(_env_pairs(args.env))
    scaling = None
    if args.autoscale:
        scaling = Autoscaling(
            min_instances=args.min_instances,
            max_instances=args.max_instances,
            target=args.scale_target,
            metric=args.scale_metric,
        )
    return EndpointSpec(
        name=args.name,
        image=args.image,
        role=args.role,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        environment=environment,
        startup_timeout=args.startup_timeout,
        autoscaling=scaling,
    )


def main(argv: list[str] | None = None, *, deployer: Deployer | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args) if args.command in ("create", "update") else None
    except ValueError as exc:
        parser.error(str(exc))
    deployer = deployer or Deployer(region=args.region, dry_run=args.dry_run)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if args.command == "create":
            assert spec is not None
            deployer.create(spec, wait=not args.no_wait)
        elif args.command == "update":
            assert spec is not None
            deployer.update(spec, wait=not args.no_wait, keep_old=args.keep_old)
        elif args.command == "delete":
            deployer.delete(args.name, wait=not args.no_wait)
        elif args.dry_run:
            deployer.call("sagemaker", "describe_endpoint", {"EndpointName": args.name})
        else:
            print(json.dumps(deployer.status(args.name), indent=2))
    except (DeployError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        error = exc.response.get("Error", {})
        print(f"error: AWS {error.get('Code')}: {error.get('Message')}", file=sys.stderr)
        return 1
    except BotoCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`cpp-dagster train ...`: the configuration store, the local registry, predictions."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).with_name("examples")


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_add(args: argparse.Namespace) -> int:
    from cpp_dagster.local.environment import cli_url
    from cpp_dagster.settings import load_settings
    from cpp_dagster.training.configuration import ConfigError, parse
    from cpp_dagster.training.store import ConfigStore

    path = Path(args.config)
    try:
        config = parse(path.read_text(), source=str(path))
    except (ConfigError, OSError) as error:
        _echo(f"cpp-dagster train add: {error}")
        return 2
    store = ConfigStore(cli_url(load_settings(), "training"))
    store.apply_schema()
    added = store.add(config, added_by=args.added_by or getpass.getuser())
    print(
        json.dumps(
            {
                "workflow": config.workflow,
                "version": added.version.version,
                "partition_key": added.version.partition_key,
                "new_version": added.created,
            }
        )
    )
    _echo(
        "a new version: the sensor starts its training run"
        if added.created
        else "this content is already a version: nothing to train"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from cpp_dagster.local.environment import cli_url
    from cpp_dagster.settings import load_settings
    from cpp_dagster.training.store import ConfigStore

    store = ConfigStore(cli_url(load_settings(), "training"))
    store.apply_schema()
    for v in store.versions(args.workflow):
        print(
            json.dumps(
                {
                    "workflow": v.workflow,
                    "partition_key": v.partition_key,
                    "version": v.version,
                    "added": v.added.isoformat(),
                    "added_by": v.added_by,
                }
            )
        )
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from cpp_dagster.settings import load_settings
    from cpp_dagster.training.registry_server import RegistryServerError, serve

    settings = load_settings()
    root = Path(args.root) if args.root else settings.registry.folder(settings.nas_root)
    token = settings.registry.token
    if token is None and args.insecure_local and args.host not in ("127.0.0.1", "localhost", "::1"):
        _echo(f"cpp-dagster train registry: --insecure-local serves only on this machine, not on {args.host}")
        return 2
    try:
        serve(
            root,
            args.host,
            args.port,
            token=token,
            insecure_local=args.insecure_local,
            max_upload_bytes=settings.registry.max_upload_bytes,
            timeout_s=args.timeout,
            workers=args.workers,
            per_client=args.per_client,
            on_ready=lambda: _echo(
                f"model registry on http://{args.host}:{args.port}/models/ serving {root}"
                + ("" if token else " WITHOUT a token (--insecure-local)")
            ),
        )
    except RegistryServerError as error:
        _echo(f"cpp-dagster train registry: {error}")
        return 2
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cpp_dagster.settings import load_settings
    from cpp_dagster.training.engines.embedded import load_model
    from cpp_dagster.training.registry import registry_for_deployment

    settings = load_settings()
    registry = registry_for_deployment(settings.nas_root, settings.registry)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(registry.fetch(args.model, args.version, Path(tmp)))
    frame = model.predict(args.smiles, args.significance)
    for row in frame.to_dict(orient="records"):
        print(json.dumps(row, default=str))
    return 0


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="model training: configuration versions, registry, predictions")
    cmds = train.add_subparsers(dest="train_command", required=True)
    add = cmds.add_parser("add", help="add a training configuration (JSON); a new version starts a training run")
    add.add_argument("config", help=f"the JSON file (examples: {EXAMPLES})")
    add.add_argument("--added-by", help="who adds it (default: the current user)")
    add.set_defaults(fn=cmd_add)
    ls = cmds.add_parser("list", help="the stored configuration versions")
    ls.add_argument("--workflow")
    ls.set_defaults(fn=cmd_list)
    reg = cmds.add_parser("registry", help="serve the local model registry over HTTP")
    reg.add_argument("--root", help="its folder (default: CPP_MODEL_REGISTRY_DIR or $CPP_NAS_ROOT/models)")
    reg.add_argument("--host", default="127.0.0.1")
    reg.add_argument("--port", type=int, default=8765)
    reg.add_argument(
        "--insecure-local",
        action="store_true",
        help="serve without a token (CPP_MODEL_REGISTRY_TOKEN unset), on 127.0.0.1 only",
    )
    reg.add_argument(
        "--timeout", type=float, default=30, help="seconds a request's line and headers may take in all (and a stall)"
    )
    reg.add_argument("--workers", type=int, default=8, help="requests served at once (a bounded thread pool)")
    reg.add_argument("--per-client", type=int, default=4, help="connections at once from one client address")
    reg.set_defaults(fn=cmd_registry)
    predict = cmds.add_parser("predict", help="predict SMILES with a published model (embedded engine)")
    predict.add_argument("--model", required=True, help="the workflow name")
    predict.add_argument("--version", required=True, help="the version's partition key")
    predict.add_argument("--significance", type=float)
    predict.add_argument("smiles", nargs="+")
    predict.set_defaults(fn=cmd_predict)

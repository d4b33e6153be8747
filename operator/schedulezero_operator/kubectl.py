"""``kubectl schedulezero``: the plugin (``kubectl-schedulezero`` on the PATH, krew's convention).

Everything it does, plain kubectl can do too: it writes what the operator
watches (the ``schedulezero.io/run-now`` and ``schedulezero.io/backfill``
annotations, ``spec.suspend``) and reads what the operator writes (status).
It takes the flags kubectl users expect: ``-n``, ``-A``, ``--context``,
``--kubeconfig``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from schedulezero_operator import engine, kubeapi, triggers
from schedulezero_operator.curve import rotation
from schedulezero_operator.errors import InvalidSchedule

GROUP, VERSION = kubeapi.GROUP, kubeapi.VERSION


class PluginError(Exception):
    """What went wrong, said to the user as one line."""


@dataclasses.dataclass
class Session:
    """The API and the namespace the flags chose."""

    custom: Any
    namespace: str
    all_namespaces: bool
    core: Any = None
    """CoreV1Api, to tell a missing namespace from a missing object."""

    def where(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    async def get(self, plural: str, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, name
            )
        except ApiException as error:
            raise await self._failed(error, plural, name) from None
        return found

    async def patch(self, plural: str, name: str, patch: dict[str, Any]) -> None:
        try:
            await self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, name, patch, _content_type=kubeapi.MERGE_PATCH
            )
        except ApiException as error:
            raise await self._failed(error, plural, name) from None

    async def namespace_missing(self) -> bool:
        """Whether the namespace is known not to exist; False also when this user may not read namespaces.

        The API server answers a list in a namespace that does not exist with an empty list, and a get
        with the object's 404, so a mistyped ``-n`` would otherwise read as "nothing there".
        """
        if self.core is None:
            return False
        try:
            await self.core.read_namespace(self.namespace)
        except ApiException as error:
            return error.status == 404
        return False

    async def _failed(self, error: ApiException, plural: str, name: str) -> PluginError:
        kind = "Schedule" if plural == "schedules" else "Handler"
        if error.status == 404:
            if await self.namespace_missing():
                return PluginError(f'namespace "{self.namespace}" not found')
            return PluginError(f"{kind} {self.where(name)} not found")
        return PluginError(f"{kind} {self.where(name)}: {error.status} {error.reason}")


async def _session(args: argparse.Namespace) -> tuple[Session, k8s.ApiClient]:
    configuration = k8s.Configuration()
    try:
        await k8s_config.load_kube_config(
            config_file=args.kubeconfig, context=args.context, client_configuration=configuration
        )
    except (k8s_config.ConfigException, OSError) as error:
        raise PluginError(f"no usable kubeconfig: {error}") from None
    api_client = k8s.ApiClient(configuration)
    namespace = args.namespace or _context_namespace(args.kubeconfig, args.context)
    everywhere = bool(getattr(args, "all_namespaces", False))
    return Session(k8s.CustomObjectsApi(api_client), namespace, everywhere, k8s.CoreV1Api(api_client)), api_client


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the chosen (or current) context, else "default", as kubectl picks it."""
    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except (k8s_config.ConfigException, OSError):
        return "default"
    chosen = next((c for c in contexts or [] if c.get("name") == context), active) if context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


# -- verbs -------------------------------------------------------------------------


async def run_now(session: Session, args: argparse.Namespace) -> str:
    token = f"{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}-{args.name}"
    await session.patch("schedules", args.name, {"metadata": {"annotations": {kubeapi.RUN_NOW_ANNOTATION: token}}})
    annotation = f"{kubeapi.RUN_NOW_ANNOTATION}={token}"
    return f"schedule.schedulezero.io/{args.name} in {session.namespace}: run requested ({annotation})"


async def rotate_keys(session: Session, args: argparse.Namespace) -> str:
    """Asks for a rotation of the Handler's issued CURVE keys; refused at once for a Handler that has none."""
    handler = await session.get("handlers", args.name)
    spec = handler.get("spec") or {}
    where = f"handler.schedulezero.io/{args.name} in {session.namespace}"
    if spec.get("security") == "plaintext" or (spec.get("curve") or {}).get("secretName"):
        why = "spec.security is plaintext" if spec.get("security") == "plaintext" else "its keys are its own Secret's"
        raise PluginError(f"{where} has no issued keys to rotate: {why}")
    token = f"{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S.%fZ}"
    await session.patch("handlers", args.name, {"metadata": {"annotations": {rotation.ROTATE_ANNOTATION: token}}})
    return (
        f"{where}: key rotation requested ({rotation.ROTATE_ANNOTATION}={token}); `kubectl get events` shows its steps"
    )


async def suspend(session: Session, args: argparse.Namespace) -> str:
    """Suspend or resume; a Schedule already so is left alone and said ``unchanged``, as kubectl says it."""
    wanted = args.verb == "suspend"
    schedule = await session.get("schedules", args.name)
    where = f"schedule.schedulezero.io/{args.name} in {session.namespace}"
    if bool((schedule.get("spec") or {}).get("suspend")) == wanted:
        return f"{where} unchanged ({'already suspended' if wanted else 'not suspended'})"
    await session.patch("schedules", args.name, {"spec": {"suspend": wanted}})
    return f"{where}: {'suspended' if wanted else 'resumed'}"


async def backfill(session: Session, args: argparse.Namespace) -> str:
    """Checks the range here first, with the Schedule's own trigger: a refusal is said at once.

    ``--cancel`` removes the annotation instead: no further time of the backfill starts.
    """
    schedule = await session.get("schedules", args.name)
    if args.cancel:
        if kubeapi.BACKFILL_ANNOTATION not in (schedule["metadata"].get("annotations") or {}):
            return f"schedule.schedulezero.io/{args.name} in {session.namespace}: no backfill requested (unchanged)"
        await session.patch("schedules", args.name, {"metadata": {"annotations": {kubeapi.BACKFILL_ANNOTATION: None}}})
        return f"schedule.schedulezero.io/{args.name} in {session.namespace}: backfill cancelled"
    if args.start is None or args.end is None:
        raise PluginError("backfill needs --from and --to (or --cancel)")
    try:
        start, end = triggers.parse_time(args.start, "--from"), triggers.parse_time(args.end, "--to")
        created = triggers.parse_time(schedule["metadata"]["creationTimestamp"], "creationTimestamp")
        trigger = triggers.build_trigger(schedule.get("spec") or {}, created=created)
    except InvalidSchedule as error:
        raise PluginError(str(error)) from None
    if end < start:
        raise PluginError("--to is before --from")
    now = datetime.datetime.now(datetime.UTC)
    if end > now:
        raise PluginError(
            f"--to {args.end} is in the future: a backfill runs past times only, and times from now on run on "
            f"schedule; end the range before {now:%Y-%m-%dT%H:%M:%SZ}"
        )
    times = triggers.fire_times(trigger, start - datetime.timedelta(microseconds=1), end, engine.MAX_BACKFILL + 1)
    if len(times) > engine.MAX_BACKFILL:
        raise PluginError(
            f"more than {engine.MAX_BACKFILL} times of {session.where(args.name)} between {args.start} and "
            f"{args.end}: split the range"
        )
    if not times:
        raise PluginError(f"no time of {session.where(args.name)} between {args.start} and {args.end}")
    request = json.dumps({"from": args.start, "to": args.end}, separators=(",", ":"))
    await session.patch("schedules", args.name, {"metadata": {"annotations": {kubeapi.BACKFILL_ANNOTATION: request}}})
    return (
        f"schedule.schedulezero.io/{args.name} in {session.namespace}: backfill of {len(times)} times requested "
        f"({times[0]:%Y-%m-%dT%H:%M:%SZ} .. {times[-1]:%Y-%m-%dT%H:%M:%SZ}); progress in status.backfill"
    )


async def runs(session: Session, args: argparse.Namespace) -> str:
    if args.name:
        schedules = [await session.get("schedules", args.name)]
    elif session.all_namespaces:
        schedules = (await session.custom.list_cluster_custom_object(GROUP, VERSION, "schedules"))["items"]
    else:
        schedules = (
            await session.custom.list_namespaced_custom_object(GROUP, VERSION, session.namespace, "schedules")
        )["items"]
    rows = []
    for schedule in schedules:
        meta = schedule["metadata"]
        name = f"{meta['namespace']}/{meta['name']}" if session.all_namespaces else meta["name"]
        status = schedule.get("status") or {}
        for run in [*(status.get("active") or []), *(status.get("runs") or [])]:
            rows.append([name, *_run_row(run)])
    headers = ["SCHEDULE", "SCHEDULED", "OUTCOME", "ATTEMPTS", "DURATION", "TRIGGER", "RESULT / ERROR"]
    if args.name:
        headers, rows = headers[1:], [row[1:] for row in rows]
    if not schedules:
        if not session.all_namespaces and await session.namespace_missing():
            raise PluginError(f'namespace "{session.namespace}" not found')
        return "No Schedules found" + ("" if session.all_namespaces else f" in namespace {session.namespace}")
    if not rows:
        return "no runs recorded yet" + (f" for {session.where(args.name)}" if args.name else "")
    return _table(headers, rows)


def _run_row(run: dict[str, Any]) -> list[str]:
    error = run.get("error") or {}
    outcome = run.get("outcome") or ("Running" if "interrupted" not in run else "Interrupted")
    duration = run.get("durationSeconds")
    detail = f"{error.get('type')}: {error.get('message')}" if error else str(run.get("result") or "")
    return [
        str(run.get("scheduledTime", "")),
        outcome,
        str(run.get("attempts", run.get("attempt", ""))),
        f"{duration:.3f}s" if isinstance(duration, (int, float)) else "",
        str(run.get("trigger") or "schedule"),
        " ".join(detail.split())[:100],
    ]


async def describe_handler(session: Session, args: argparse.Namespace) -> str:
    handler = await session.get("handlers", args.name)
    spec, status = handler.get("spec") or {}, handler.get("status") or {}
    reachable: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Reachable"), {})
    lines = [
        f"Name:       {session.where(args.name)}",
        f"Address:    {spec.get('endpoint') or 'Service ' + str((spec.get('service') or {}).get('name'))}",
        f"State:      {status.get('state', 'not probed yet')}",
        f"Version:    {status.get('version') or ''}",
        f"Replicas:   {status.get('readyReplicas', 0)} of {status.get('replicas', 0)} answering",
        f"Reachable:  {reachable.get('status', 'Unknown')} ({reachable.get('reason', '')}: "
        f"{reachable.get('message', '')})",
        "",
    ]
    pods = [
        [p.get("name", ""), p.get("endpoint", ""), str(p.get("ready", "")), p.get("state", ""), p.get("version", ""),
         p.get("lastSeenTime", ""), p.get("message", "")]
        for p in status.get("pods") or []
    ]  # fmt: skip
    if pods:
        lines += [_table(["POD", "ENDPOINT", "READY", "STATE", "VERSION", "LAST SEEN", "MESSAGE"], pods), ""]
    methods = [
        [m["name"], ", ".join(_param(p) for p in m.get("params") or []), " ".join(str(m.get("doc") or "").split())[:80]]
        for m in status.get("methods") or []
    ]
    lines.append(_table(["METHOD", "PARAMS", "DOC"], methods) if methods else "Methods:    none seen yet")
    return "\n".join(lines)


def _param(param: dict[str, Any]) -> str:
    """``name: type``; ``(optional)`` for one with a default (the handler reports that it has one, not which)."""
    name = f"**{param['name']}" if param.get("variadic") else str(param["name"])
    optional = not param.get("required") and not param.get("variadic")
    return f"{name}: {param.get('type', 'Any')}" + (" (optional)" if optional else "")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    return "\n".join(
        "   ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


# -- the command line --------------------------------------------------------------

Verb = Callable[[Session, argparse.Namespace], Awaitable[str]]


DESCRIPTION = """\
Run, suspend, resume and backfill ScheduleZero Schedules, read their runs and
Handlers, and rotate a Handler's keys. Each verb writes what kubectl can write too: an annotation the
operator acts on, or spec.suspend."""

EXAMPLES = """\
examples:
  # one run now, whatever the schedule
  kubectl schedulezero run-now greeting

  # stop a Schedule's runs, and go on from its next time
  kubectl schedulezero suspend greeting
  kubectl schedulezero resume greeting

  # run every time of a past range again, each under its own run id
  kubectl schedulezero backfill nightly --from 2026-11-01T00:00:00Z --to 2026-11-07T23:59:59Z

  # the run history of one Schedule, of a namespace, of every namespace
  kubectl schedulezero runs greeting
  kubectl schedulezero runs -n reports
  kubectl schedulezero runs -A

  # a Handler's replicas, state, methods and their parameters
  kubectl schedulezero describe-handler example

  # new CURVE keys for a Handler, the old ones served until every caller has moved
  kubectl schedulezero rotate-keys example

Every verb takes -n NAMESPACE, --context and --kubeconfig, as kubectl does.
"kubectl schedulezero VERB --help" says more about each."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="kubectl schedulezero",
        usage="kubectl schedulezero VERB [NAME] [-n NAMESPACE] [options]",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    common.add_argument("--context", help="kubeconfig context (default: the current one)")
    common.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, else ~/.kube/config)")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, function: Verb, help_: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, parents=[common], help=help_, description=help_)
        sub.set_defaults(function=function)
        return sub

    verb("run-now", run_now, "run a Schedule once now, whatever its schedule").add_argument("name")
    verb("suspend", suspend, "stop a Schedule's runs (spec.suspend: true)").add_argument("name")
    verb("resume", suspend, "resume a suspended Schedule from its next time").add_argument("name")
    filling = verb("backfill", backfill, "run the nominal times of a past range, each under its own run id")
    filling.add_argument("name")
    filling.add_argument("--from", dest="start", help="first time, RFC 3339 (2026-11-01T00:00:00Z)")
    filling.add_argument("--to", dest="end", help="last time, RFC 3339, not after now")
    filling.add_argument("--cancel", action="store_true", help="stop the backfill running: no further time starts")
    history = verb("runs", runs, "the run history: of one Schedule, or of all in the namespace (-A: everywhere)")
    history.add_argument("name", nargs="?")
    history.add_argument("-A", "--all-namespaces", action="store_true", help="Schedules of every namespace")
    verb("describe-handler", describe_handler, "a Handler's replicas, state and methods").add_argument("name")
    verb("rotate-keys", rotate_keys, "rotate a Handler's issued CURVE keys, without a failed call").add_argument("name")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    async def perform() -> str:
        session, api_client = await _session(args)
        try:
            function: Verb = args.function
            return await function(session, args)
        finally:
            await api_client.close()

    try:
        print(asyncio.run(perform()))
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

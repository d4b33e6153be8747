"""EndpointSlices into pods: the conditions, ports and address types the API can hold, and anything else."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schedulezero_handler import endpoints


def slice_(
    name: str, *entries: dict[str, Any], ports: Any = None, service: str = "acme", **extra: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team-a", "labels": {endpoints.SERVICE_LABEL: service}},
        "addressType": "IPv4",
        "ports": [{"name": "zmq", "port": 5555, "protocol": "TCP"}] if ports is None else ports,
        "endpoints": list(entries),
        **extra,
    }


def pod(ip: str, name: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": name}}


def test_ready_terminating_and_unset_conditions_as_the_api_means_them() -> None:
    body = slice_(
        "acme-x",
        pod("10.0.0.1", "acme-1", ready=True, serving=True),
        pod("10.0.0.2", "acme-2"),  # conditions unset: ready
        pod("10.0.0.3", "acme-3", ready=False, serving=True, terminating=True),
        pod("10.0.0.4", "acme-4", ready=False, serving=False),
    )
    found = {e.pod: e for e in endpoints.from_slice(body, service_port=5555)}
    assert found["acme-1"] == endpoints.Endpoint("tcp://10.0.0.1:5555", "acme-1", ready=True, serving=True)
    assert found["acme-2"].ready
    assert found["acme-3"].serving
    assert not found["acme-3"].ready
    assert not found["acme-4"].serving


def test_the_zeromq_port_of_a_service_with_several() -> None:
    ports = [{"name": "http", "port": 8080}, {"name": "zmq", "port": 6000}]
    body = slice_("a", pod("10.0.0.1", "p"), ports=ports)
    assert [e.address for e in endpoints.from_slice(body, service_port=5555)] == ["tcp://10.0.0.1:6000"]
    assert [e.address for e in endpoints.from_slice(body, service_port=8080)] == ["tcp://10.0.0.1:8080"]
    body["ports"] = [{"name": "a", "port": 1}, {"name": "b", "port": 2}]
    assert endpoints.from_slice(body, service_port=5555) == []


def test_ipv6_addresses_are_bracketed() -> None:
    body = slice_("a", pod("fd00::1", "p"), addressType="IPv6")
    assert endpoints.from_slice(body, service_port=5555)[0].address == "tcp://[fd00::1]:5555"


def test_a_pod_in_two_slices_at_once_counts_once_and_ready_wins() -> None:
    known = endpoints.ServiceEndpoints()
    known.apply(slice_("old", pod("10.0.0.1", "p1", ready=False, serving=True)))
    known.apply(slice_("new", pod("10.0.0.1", "p1", ready=True), pod("10.0.0.2", "p2")))
    known.apply(slice_("other", pod("10.0.0.9", "x"), service="other"))
    pods = known.endpoints("team-a", "acme", 5555)
    assert [(e.pod, e.ready) for e in pods] == [("p1", True), ("p2", True)]
    known.delete(slice_("new"))
    assert [(e.pod, e.ready) for e in known.endpoints("team-a", "acme", 5555)] == [("p1", False)]
    known.delete(slice_("old"))
    assert ("team-a", "acme") not in known.slices
    assert known.endpoints("team-a", "acme", 5555) == ()


json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field as the API would hold it, or any JSON at all in its place."""
    return valid | json


entry = st.fixed_dictionaries(
    {},
    optional={
        "addresses": either(st.lists(either(st.ip_addresses(v=4).map(str)), max_size=2)),
        "conditions": either(
            st.fixed_dictionaries({}, optional={k: either(st.booleans()) for k in ("ready", "serving", "terminating")})
        ),
        "targetRef": either(st.fixed_dictionaries({}, optional={"kind": either(st.just("Pod")), "name": json})),
    },
)
port = st.fixed_dictionaries(
    {}, optional={"name": either(st.just("zmq")), "port": either(st.integers(1, 65535)), "protocol": json}
)
slices = st.fixed_dictionaries(
    {},
    optional={
        "ports": either(st.lists(either(port), max_size=3)),
        "endpoints": either(st.lists(either(entry), max_size=4)),
        "addressType": either(st.sampled_from(["IPv4", "IPv6", "FQDN"])),
    },
)


@settings(max_examples=1000, deadline=None)  # a crash is the failure here, not a slow example on a busy machine
@given(slices)
def test_a_malformed_slice_yields_what_it_can_and_never_raises(fields: dict[str, Any]) -> None:
    """A slice written by hand (no controller checks it) may hold anything in any field."""
    known = endpoints.ServiceEndpoints()
    body = {"metadata": {"name": "odd", "namespace": "ns", "labels": {endpoints.SERVICE_LABEL: "svc"}}, **fields}
    known.apply(body)
    found = known.endpoints("ns", "svc", 5555)
    assert all(e.address.startswith("tcp://") and e.pod for e in found)

"""kmock's Kubernetes emulator on a loopback port, for tests of InfraPilot's Kubernetes mode.

Usage: kmock_emulator.py [--resource GROUP/VERSION/PLURAL ...]

Prints "listening on http://127.0.0.1:PORT" once it accepts connections and serves until
SIGTERM or SIGINT. Objects live in memory: list, watch, get, create, patch and delete behave
like a (simple) API server. Resources given with --resource are known before any object of
theirs exists, so that listing an empty collection answers 200 rather than 404.

kmock stores objects as given; a real API server also stamps metadata, which kube's watcher
and Controller rely on. The subclass below stamps uid, creationTimestamp, namespace,
resourceVersion (one increasing counter) and generation (bumped when a patch changes spec).
kmock merges every PATCH body into the object; JSON patches (a list of operations, as kube's
finalizer helper sends) are applied here first and handed on as the merge they amount to.

Optimistic concurrency as a real API server has it: a PUT (replace, which kmock lacks) or PATCH
whose resulting metadata.resourceVersion is not the stored one is answered 409 Conflict; a PUT
without one is refused (422), as it is for custom resources. Writes that carry no
resourceVersion (merge and server-side apply patches without one) apply to the latest version.

For fault tests, under /_emulator/ (not part of any Kubernetes API):
  POST   /_emulator/faults  {"path": REGEX, "methods": [...], "client": TOKEN, "status": 500,
                             "count": N}  answers matching requests with that status (all of
                             them, or the next N) instead of serving them; `client` is the
                             bearer token of the kubeconfig's user (absent: every client).
  DELETE /_emulator/faults  removes every fault.
  GET    /_emulator/writes  every write served so far: time (Unix seconds), client, method,
                             path, status (including conflicts and injected faults).
"""

import argparse
import asyncio
import copy
import datetime
import itertools
import re
import signal
import time
import uuid

import aiohttp.web
import attrs
import kmock


WRITES = ("POST", "PUT", "PATCH", "DELETE")


def status_response(code, reason, message, details=None):
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    if details is not None:
        body["details"] = details
    return aiohttp.web.json_response(body, status=code)


def client_of(request):
    """The bearer token the request carries: which replica (kubeconfig user) sent it."""
    for key, value in request.headers.items():
        if key.lower() == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


@attrs.define
class Fault:
    path: re.Pattern
    methods: frozenset
    client: str | None
    status: int
    remaining: int | None

    def matches(self, method, path, client):
        return (
            method in self.methods
            and self.path.search(path) is not None
            and (self.client is None or self.client == client)
            and (self.remaining is None or self.remaining > 0)
        )


REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


class Emulator(kmock.KubernetesEmulator):
    _versions = itertools.count(1)
    _last_version = 0
    faults = []
    writes = []

    def _next_version(self):
        Emulator._last_version = next(self._versions)
        return str(Emulator._last_version)

    async def _serve_list(self, request):
        # kmock answers "..."; a watch started from a list needs the real current version.
        result = await super()._serve_list(request)
        result["metadata"]["resourceVersion"] = str(Emulator._last_version)
        return result

    async def _handle(self, request):
        path = request.url.path
        if path.startswith("/_emulator/"):
            return self._control(request, path)
        method = request.method.value
        if method not in WRITES:
            return await self._serve(request)
        client = client_of(request)
        for fault in self.faults:
            if fault.matches(method, path, client):
                if fault.remaining is not None:
                    fault.remaining -= 1
                response = status_response(
                    fault.status,
                    REASONS.get(fault.status, "InternalError"),
                    f"injected by the test: {method} {path} answers {fault.status}",
                )
                break
        else:
            response = await self._serve(request)
        self.writes.append(
            {
                "time": time.time(),
                "client": client,
                "method": method,
                "path": path,
                "status": response.status,
            }
        )
        return response

    def _control(self, request, path):
        if path == "/_emulator/faults" and request.method == "POST":
            spec = request.data or {}
            self.faults.append(
                Fault(
                    path=re.compile(spec.get("path", "")),
                    methods=frozenset(m.upper() for m in spec.get("methods", WRITES)),
                    client=spec.get("client"),
                    status=int(spec.get("status", 500)),
                    remaining=spec.get("count"),
                )
            )
            return aiohttp.web.json_response({"faults": len(self.faults)})
        if path == "/_emulator/faults" and request.method == "DELETE":
            self.faults.clear()
            return aiohttp.web.json_response({"faults": 0})
        if path == "/_emulator/writes" and request.method == "GET":
            return aiohttp.web.json_response({"writes": self.writes})
        return status_response(404, "NotFound", f"no control endpoint {request.method} {path}")

    def _stale(self, key, meta):
        """409 when a write names a resourceVersion other than the stored one."""
        wanted = meta.get("resourceVersion") if isinstance(meta, dict) else None
        current = self.objects[key].raw.get("metadata", {}).get("resourceVersion")
        if wanted in (None, "") or wanted == current:
            return None
        resource, _, name = key
        group = f".{resource.group}" if resource.group else ""
        return status_response(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {resource.plural}{group} "{name}": the object '
            "has been modified; please apply your changes to the latest version and try again",
            {"name": name, "group": resource.group, "kind": resource.plural},
        )

    async def _replace(self, request):
        """PUT: the whole object (or, on /status, its status) replaced, if its version is current."""
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return status_response(404, "NotFound", f"{request.name} not found")
        data = request.data if isinstance(request.data, dict) else {}
        meta = data.get("metadata", {})
        if not meta.get("resourceVersion"):
            return status_response(
                422,
                "Invalid",
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            )
        stale = self._stale(key, meta)
        if stale is not None:
            return stale
        current = copy.deepcopy(self.objects[key].raw)
        if request.subresource == "status":
            replaced = dict(current, status=data.get("status"))
        else:
            # The status subresource is written through /status only, as a real server does.
            replaced = dict(data)
            replaced["status"] = current.get("status")
            stamped = ("uid", "creationTimestamp", "namespace", "generation", "deletionTimestamp")
            kept = {k: current["metadata"][k] for k in stamped if k in current.get("metadata", {})}
            replaced["metadata"] = dict(meta, **kept)
            if current.get("spec") != data.get("spec"):
                replaced["metadata"]["generation"] = kept.get("generation", 1) + 1
        if replaced.get("status") is None:
            replaced.pop("status", None)
        replaced["metadata"]["resourceVersion"] = self._next_version()
        self.objects[key].create(replaced)
        raw = self.objects[key].raw
        await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        if replaced["metadata"].get("deletionTimestamp") and not replaced["metadata"].get("finalizers"):
            self.objects[key].delete()
            await self._buses[request.resource].put({"type": "DELETED", "object": raw})
        return aiohttp.web.json_response(raw)

    async def _serve(self, request):
        if request.resource is not None and request.name is not None and request.method == "PUT":
            return await self._replace(request)
        if (
            request.resource is not None
            and request.action == kmock.action.UPDATE
            and request.name is not None
            and isinstance(request.data, list)
        ):
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects:
                return aiohttp.web.json_response({"kind": "Status", "code": 404}, status=404)
            patched = apply_json_patch(self.objects[key].raw, request.data)
            if patched is None:
                return aiohttp.web.json_response(
                    {"kind": "Status", "code": 422, "reason": "Invalid", "message": "test failed"},
                    status=422,
                )
            stale = self._stale(key, patched.get("metadata", {}))
            if stale is not None:
                return stale
            # kmock merges dicts and replaces lists: the metadata is what JSON patches change.
            request = attrs.evolve(request, data={"metadata": patched.get("metadata", {})})
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault(
                    "creationTimestamp",
                    datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
                if request.namespace and "namespace" not in meta:
                    meta["namespace"] = request.namespace
                meta["generation"] = 1
                meta["resourceVersion"] = self._next_version()
            elif request.action == kmock.action.UPDATE and request.name is not None:
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    stale = self._stale(key, meta)
                    if stale is not None:
                        return stale
                    current = self.objects[key].raw
                    generation = current.get("metadata", {}).get("generation", 1)
                    spec = data.get("spec")
                    if isinstance(spec, dict) and any(
                        current.get("spec", {}).get(k) != v for k, v in spec.items()
                    ):
                        generation += 1
                    meta["generation"] = generation
                meta["resourceVersion"] = self._next_version()
        return await super()._handle(request)


def apply_json_patch(document, operations):
    """RFC 6902 add, remove, replace and test on a copy; None when a test fails."""
    document = copy.deepcopy(document)
    for op in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = document
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        index = (len(parent) if last == "-" else int(last)) if isinstance(parent, list) else last
        if op["op"] == "test":
            current = parent[index] if isinstance(parent, list) else parent.get(index)
            if current != op["value"]:
                return None
        elif op["op"] == "add":
            if isinstance(parent, list):
                parent.insert(index, op["value"])
            else:
                parent[index] = op["value"]
        elif op["op"] == "replace":
            parent[index] = op["value"]
        elif op["op"] == "remove":
            del parent[index]
    return document


async def serve(resources):
    emulator = Emulator()
    for resource in resources:
        emulator.resources[resource] = {}
    async with emulator, kmock.Server(emulator, host="127.0.0.1", port=0) as server:
        print(f"listening on {server.url}".rstrip("/"), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resource", action="append", default=[], metavar="GROUP/VERSION/PLURAL")
    args = parser.parse_args()
    asyncio.run(serve(args.resource))


if __name__ == "__main__":
    main()

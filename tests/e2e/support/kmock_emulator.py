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
"""

import argparse
import asyncio
import copy
import datetime
import itertools
import signal
import uuid

import aiohttp.web
import attrs
import kmock


class Emulator(kmock.KubernetesEmulator):
    _versions = itertools.count(1)
    _last_version = 0

    def _next_version(self):
        Emulator._last_version = next(self._versions)
        return str(Emulator._last_version)

    async def _serve_list(self, request):
        # kmock answers "..."; a watch started from a list needs the real current version.
        result = await super()._serve_list(request)
        result["metadata"]["resourceVersion"] = str(Emulator._last_version)
        return result

    async def _handle(self, request):
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
                if key in self.objects:
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

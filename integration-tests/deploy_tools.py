"""Reading the deployment files without a Docker engine or a cluster, for test_deploy.py.

- ``Dockerfile``: the instructions of each stage (ENV, ENTRYPOINT, CMD, HEALTHCHECK, COPY...).
- ``DockerIgnore``: which files of a build context a ``.dockerignore`` sends to the daemon.
- ``compose_variables``: the ``${VAR}`` interpolations of a compose file.
- ``render_kustomization``: ``kustomize build`` for the subset of kustomize that ``k8s/``
  uses. No kustomize binary is installable from PyPI or Debian, so this renders in Python
  and rejects every field it does not implement; where a real ``kubectl``/``kustomize`` is
  on PATH, test_deploy.py compares the two outputs.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ---- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, ENV, COPY, ...
    arguments: str  # the rest of the instruction, continuation lines joined
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


class Dockerfile:
    """The stages of a Dockerfile, as the builder reads them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.args: dict[str, str] = {}  # ARGs before the first FROM (usable in FROM lines)
        self.stages: list[Stage] = []
        for instruction in _instructions(path.read_text()):
            if instruction.keyword == "FROM":
                words = instruction.arguments.split()
                words = [w for w in words if not w.startswith("--")]  # --platform=...
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
                self.stages.append(Stage(_substitute(words[0], self.args), name))
            elif not self.stages:
                if instruction.keyword != "ARG":
                    raise ValueError(f"{path}:{instruction.line}: {instruction.keyword} before FROM")
                key, _, value = instruction.arguments.partition("=")
                self.args[key.strip()] = value.strip()
            else:
                self.stages[-1].instructions.append(instruction)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The final stage's ENV, ``$VAR`` references resolved against earlier ENVs and ``base``."""
        env: dict[str, str] = {}
        for instruction in self.final.all("ENV"):
            for key, value in _key_values(instruction.arguments):
                env[key] = _substitute(value, {**base, **env})
        return env

    def exec_form(self, keyword: str) -> list[str] | None:
        """ENTRYPOINT or CMD of the final stage, which must be in exec (JSON) form."""
        instruction = self.final.last(keyword)
        if instruction is None:
            return None
        return _json_array(instruction, self.path)

    def healthcheck(self) -> tuple[dict[str, str], list[str]] | None:
        """(options, command) of the final stage's HEALTHCHECK; None for HEALTHCHECK NONE."""
        instruction = self.final.last("HEALTHCHECK")
        if instruction is None or instruction.arguments.strip().upper() == "NONE":
            return None
        options: dict[str, str] = {}
        rest = instruction.arguments.strip()
        while rest.startswith("--"):
            option, _, rest = rest.partition(" ")
            key, _, value = option[2:].partition("=")
            options[key] = value
            rest = rest.strip()
        keyword, _, command = rest.partition(" ")
        if keyword.upper() != "CMD":
            raise ValueError(f"{self.path}:{instruction.line}: HEALTHCHECK without CMD")
        return options, _json_array(Instruction("CMD", command, instruction.line), self.path)

    def copies(self) -> Iterator[tuple[Stage, list[str], str, dict[str, str]]]:
        """(stage, sources, destination, flags) of every COPY and ADD."""
        for stage in self.stages:
            for instruction in stage.instructions:
                if instruction.keyword not in ("COPY", "ADD"):
                    continue
                words = shlex.split(instruction.arguments)
                flags = {}
                while words and words[0].startswith("--"):
                    key, _, value = words.pop(0)[2:].partition("=")
                    flags[key] = value
                yield stage, words[:-1], words[-1], flags


def _instructions(text: str) -> Iterator[Instruction]:
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue  # comments and parser directives (# syntax=...)
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped by the builder
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, arguments = joined.partition(" ")
        yield Instruction(keyword.upper(), arguments.strip(), start)
    if pending:
        raise ValueError("the Dockerfile ends inside a continued line")


def _json_array(instruction: Instruction, path: Path) -> list[str]:
    try:
        value = json.loads(instruction.arguments)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(
            f"{path}:{instruction.line}: {instruction.keyword} is not in exec form (a JSON array): "
            "a shell would stand between the process and its signals"
        )
    return value


def _key_values(arguments: str) -> list[tuple[str, str]]:
    words = shlex.split(arguments)
    if words and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
        return [(words[0], " ".join(words[1:]))]
    return [(key, value) for key, _, value in (word.partition("=") for word in words)]


_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _substitute(value: str, env: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


# ---- .dockerignore ---------------------------------------------------------------------------


class DockerIgnore:
    """The rules of a .dockerignore: the last matching pattern decides, ``!`` re-includes,
    and a pattern that matches a directory matches everything below it."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str], str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
            self.rules.append((include, re.compile(_pattern_regex(pattern)), pattern))

    @classmethod
    def of(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        return cls(path.read_text() if path.exists() else "")

    def excluded(self, relative: str) -> bool:
        candidates = _self_and_parents(relative)
        excluded = False
        for include, regex, _ in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                excluded = not include
        return excluded

    def may_include_below(self, directory: str) -> bool:
        """Whether some ``!`` pattern could bring back a file below an excluded directory."""
        return any(include and pattern.startswith(directory + "/") for include, _, pattern in self.rules)

    def sent(self, context: Path) -> Iterator[str]:
        """The files of ``context`` that the client sends (relative paths with /)."""
        for root, dirs, files in os.walk(context):
            base = Path(root).relative_to(context).as_posix()
            prefix = "" if base == "." else base + "/"
            dirs[:] = [d for d in dirs if not self.excluded(prefix + d) or self.may_include_below(prefix + d)]
            for name in files:
                if not self.excluded(prefix + name):
                    yield prefix + name


def _self_and_parents(relative: str) -> list[str]:
    parts = relative.split("/")
    return ["/".join(parts[: n + 1]) for n in range(len(parts))]


def _pattern_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif char == "*":
            out, i = out + "[^/]*", i + 1
        elif char == "?":
            out, i = out + "[^/]", i + 1
        elif char == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(char), i + 1
    return out


# ---- docker compose --------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)


@dataclass(frozen=True)
class ComposeVariable:
    name: str
    operator: str | None  # ":-" for a default, "-", ":?", "?", ":+", "+", or None for none
    argument: str  # the default (or message) after the operator


def compose_variables(document: object) -> list[ComposeVariable]:
    """Every ``${VAR...}`` and ``$VAR`` in the string values (and keys) of a compose file."""
    found: list[ComposeVariable] = []
    for text in _strings(document):
        for match in _INTERPOLATION.finditer(text):
            if match.group(0) == "$$":
                continue  # an escaped dollar
            if match.group(2) is not None:
                found.append(ComposeVariable(match.group(2), None, ""))
                continue
            inner = _BRACED.fullmatch(match.group(1))
            if inner is None:
                raise ValueError(f"not a compose interpolation: {match.group(0)!r}")
            found.append(ComposeVariable(inner.group(1), inner.group(2), inner.group(3) or ""))
    return found


def interpolate(document: Any, env: Mapping[str, str]) -> Any:
    """The compose file with its variables replaced, as ``docker compose config`` does (for
    the forms ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}``)."""
    if isinstance(document, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in document.items()}
    if isinstance(document, list):
        return [interpolate(item, env) for item in document]
    if not isinstance(document, str):
        return document

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        inner = _BRACED.fullmatch(match.group(1) or match.group(2))
        assert inner is not None
        name, operator, argument = inner.group(1), inner.group(2), inner.group(3) or ""
        value = env.get(name)
        if operator == ":-" and not value:
            return argument
        if operator == "-" and value is None:
            return argument
        if operator not in (None, ":-", "-"):
            raise ValueError(f"interpolation {match.group(0)!r} is not supported here")
        return value or ""

    return _INTERPOLATION.sub(replace, document)


def _strings(document: object) -> Iterator[str]:
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for key, value in document.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(document, list):
        for item in document:
            yield from _strings(item)


# ---- kustomize -------------------------------------------------------------------------------

# Kinds that live outside namespaces: the namespace transformer leaves them alone.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}
_SUPPORTED_FIELDS = {
    "Kustomization": {
        "apiVersion",
        "kind",
        "namespace",
        "resources",
        "components",
        "configMapGenerator",
        "secretGenerator",
        "images",
        "patches",
    },
    "Component": {"apiVersion", "kind", "resources", "configMapGenerator", "secretGenerator", "patches"},
}
_POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


class UnsupportedKustomizeError(Exception):
    """The kustomization uses something this renderer does not implement."""


@dataclass
class _Resource:
    doc: dict[str, Any]
    generated: bool = False  # made by a generator: its name gets a hash of its content
    origin: str = ""  # the name before any suffix: what references use

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        value = self.doc["metadata"].get("namespace")
        return None if value is None else str(value)


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """What ``kustomize build directory`` prints, as a list of documents (its order aside)."""
    resources = _build(directory.resolve(), [], "Kustomization")
    for resource in resources:
        if resource.generated:
            resource.doc["metadata"]["name"] = f"{resource.origin}-{kustomize_hash(resource.doc)}"
    _fix_name_references(resources)
    return [resource.doc for resource in resources]


def kustomize_hash(doc: Mapping[str, Any]) -> str:
    """The suffix kustomize (api/hasher, v5) appends to a generated ConfigMap's or Secret's
    name. Faithful to a quirk: it looks the name up as one field called "metadata/name",
    finds none and hashes an empty name, so the hash depends on the content alone."""
    if doc["kind"] == "ConfigMap":
        encoded: dict[str, Any] = {"kind": "ConfigMap", "name": "", "data": doc.get("data") or ""}
        if doc.get("binaryData"):
            encoded["binaryData"] = doc["binaryData"]
    elif doc["kind"] == "Secret":
        encoded = {"kind": "Secret", "type": doc.get("type", ""), "name": "", "data": doc.get("data") or ""}
        if doc.get("stringData"):
            encoded["stringData"] = doc["stringData"]
    else:
        raise UnsupportedKustomizeError(f"no hash for generated {doc['kind']}")
    # Go's encoding/json: sorted keys, no spaces, UTF-8 as is, and <, >, & escaped.
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    table: dict[str, str | int | None] = {"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}
    return digest.translate(str.maketrans(table))


def _build(directory: Path, accumulated: list[_Resource], kind: str) -> list[_Resource]:
    path = directory / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    if spec.get("kind", "Kustomization") != kind:
        raise UnsupportedKustomizeError(f"{path}: expected a {kind}")
    unknown = set(spec) - _SUPPORTED_FIELDS[kind]
    if unknown:
        raise UnsupportedKustomizeError(f"{path}: fields not implemented here: {sorted(unknown)}")
    resources = accumulated
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(_build(target, [], "Kustomization"))
        else:
            docs = [doc for doc in yaml.safe_load_all(target.read_text()) if doc]
            resources.extend(_Resource(doc, origin=doc["metadata"]["name"]) for doc in docs)
    for entry in spec.get("components", []):
        # A component works on what is accumulated so far: its patches see the resources above.
        resources = _build((directory / entry).resolve(), resources, "Component")
    for generator in spec.get("configMapGenerator", []):
        _generate(resources, "ConfigMap", generator, path)
    for generator in spec.get("secretGenerator", []):
        _generate(resources, "Secret", generator, path)
    # Transformers, in kustomize's order: patches, namespace, images.
    for patch in spec.get("patches", []):
        resources = _patch(resources, patch, directory)
    if "namespace" in spec:
        for resource in resources:
            if resource.kind not in CLUSTER_SCOPED:
                resource.doc["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for resource in resources:
            _set_image(resource.doc, image)
    return resources


def _generate(resources: list[_Resource], kind: str, generator: dict[str, Any], path: Path) -> None:
    unknown = set(generator) - {"name", "literals", "behavior", "type"}
    if unknown:
        raise UnsupportedKustomizeError(f"{path}: generator fields not implemented here: {sorted(unknown)}")
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep or value[:1] in ("'", '"'):
            raise UnsupportedKustomizeError(f"{path}: literal {literal!r}")
        data[key] = value
    if kind == "Secret":
        data = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    behavior = generator.get("behavior", "create")
    existing = [r for r in resources if r.kind == kind and r.generated and r.origin == generator["name"]]
    if behavior == "create":
        if existing:
            raise UnsupportedKustomizeError(f"{path}: {generator['name']} exists: use behavior merge")
        doc: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}}
        if kind == "Secret":
            doc["type"] = generator.get("type", "Opaque")
        doc["data"] = data
        resources.append(_Resource(doc, generated=True, origin=generator["name"]))
    elif behavior in ("merge", "replace") and len(existing) == 1:
        target = existing[0].doc
        target["data"] = {**target.get("data", {}), **data} if behavior == "merge" else data
    else:
        raise UnsupportedKustomizeError(f"{path}: behavior {behavior} for {generator['name']}")


def _patch(resources: list[_Resource], patch: dict[str, Any], directory: Path) -> list[_Resource]:
    if set(patch) - {"patch", "path", "target"}:
        raise UnsupportedKustomizeError(f"patch fields not implemented here: {sorted(patch)}")
    text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
    body = yaml.safe_load(text)
    if isinstance(body, list):  # JSON 6902 operations, on the resources `target` selects
        selected = [r for r in resources if _selected(r, patch.get("target"))]
        if not selected:
            raise UnsupportedKustomizeError(f"patch target matches nothing: {patch.get('target')}")
        for resource in selected:
            for operation in body:
                _json_patch(resource.doc, operation)
        return resources
    # A strategic-merge patch: only deletion is implemented (the component's use).
    if body.get("$patch") != "delete" or "target" in patch:
        raise UnsupportedKustomizeError("strategic-merge patches other than $patch: delete")
    wanted = {"kind": body["kind"], "name": body["metadata"]["name"]}
    remaining = [r for r in resources if not _selected(r, wanted)]
    if len(remaining) == len(resources):
        raise UnsupportedKustomizeError(f"$patch: delete matches nothing: {wanted}")
    return remaining


def _selected(resource: _Resource, target: Mapping[str, str] | None) -> bool:
    if not target:
        raise UnsupportedKustomizeError("a JSON patch needs a target")
    if set(target) - {"kind", "name", "namespace"}:
        raise UnsupportedKustomizeError(f"target fields not implemented here: {sorted(target)}")
    return all(
        {"kind": resource.kind, "name": resource.name, "namespace": resource.namespace}[key] == value
        for key, value in target.items()
    )


def _json_patch(doc: dict[str, Any], operation: dict[str, Any]) -> None:
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in operation["path"].split("/")[1:]]
    *parents, last = tokens
    node: Any = doc
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    op = operation["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            node[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[index]
        else:
            raise UnsupportedKustomizeError(f"JSON patch op {op}")
    elif op in ("add", "replace"):
        if op == "replace" and last not in node:
            raise KeyError(f"replace of a missing member: {operation['path']}")
        node[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del node[last]
    else:
        raise UnsupportedKustomizeError(f"JSON patch op {op}")


def _pod_spec(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    path = _POD_SPEC_PATHS.get(str(doc.get("kind")))
    node: Any = doc
    for key in path or ():
        node = node.get(key) if isinstance(node, dict) else None
    return node if path and isinstance(node, dict) else None


def _set_image(doc: dict[str, Any], image: Mapping[str, str]) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise UnsupportedKustomizeError(f"image fields not implemented here: {sorted(image)}")
    spec = _pod_spec(doc)
    for container in (spec or {}).get("containers", []) + (spec or {}).get("initContainers", []):
        name, tag = split_image(container["image"])
        if name != image["name"]:
            continue
        new = image.get("newName", name)
        if "digest" in image:
            new += "@" + image["digest"]
        elif "newTag" in image:
            new += ":" + str(image["newTag"])
        elif tag:
            new += tag
        container["image"] = new


def split_image(reference: str) -> tuple[str, str]:
    """("registry/name", ":tag" or "@digest" or "")."""
    if "@" in reference:
        name, digest = reference.split("@", 1)
        return name, "@" + digest
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon:]
    return reference, ""


def _fix_name_references(resources: list[_Resource]) -> None:
    """Point references to generated ConfigMaps and Secrets at their suffixed names
    (within one namespace, as kustomize does)."""
    renamed = {(r.kind, r.namespace, r.origin): r.name for r in resources if r.generated}

    def fix(kind: str, namespace: str | None, holder: dict[str, Any], key: str) -> None:
        if isinstance(holder, dict) and key in holder:
            holder[key] = renamed.get((kind, namespace, holder[key]), holder[key])

    for resource in resources:
        spec = _pod_spec(resource.doc)
        if spec is None:
            continue
        namespace = resource.namespace
        for volume in spec.get("volumes", []):
            fix("ConfigMap", namespace, volume.get("configMap", {}), "name")
            fix("Secret", namespace, volume.get("secret", {}), "secretName")
        for secret in spec.get("imagePullSecrets", []):
            fix("Secret", namespace, secret, "name")
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for source in container.get("envFrom", []):
                fix("ConfigMap", namespace, source.get("configMapRef", {}), "name")
                fix("Secret", namespace, source.get("secretRef", {}), "name")
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {})
                fix("ConfigMap", namespace, reference.get("configMapKeyRef", {}), "name")
                fix("Secret", namespace, reference.get("secretKeyRef", {}), "name")

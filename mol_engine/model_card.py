"""The model card (README.md) in every checkpoint's and export's model directory: what was trained, on what, how
it compares with the base, and how to load it.

The card is a plain dict (:func:`build_card`, made when a checkpoint is written and kept in its
``trainer_state.json`` as ``model_card``) rendered by one pure function, :func:`render_model_card`, for the
directory's kind: ``full`` weights, a LoRA ``adapter``, or the adapter ``merged`` into the base. A caller that
knows better names for the files than the paths the engine was given (the service: its model id and the owner's
dataset names, :func:`reference_names`) renders the card again with them (:func:`portable_files`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .token_store import file_sha256

CARD_FILE = "README.md"
ADAPTER_CONFIG = "adapter_config.json"
KIND_TEXT = {"full": "Full weights", "adapter": "A LoRA adapter",  # what a model directory holds
             "merged": "The base model with a LoRA adapter merged in"}
KINDS = tuple(KIND_TEXT)
SOFTWARE = ("torch", "transformers", "peft", "mol-studio")
SMALL_JSON = 1 << 20  # configs; a tokenizer.json is larger, and holds no path
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "org/model": how the Hugging Face hub names a model
_HUB_CACHE = re.compile(r"/models--([A-Za-z0-9][\w.-]*?--[\w.-]+)/snapshots/[^/]+/?$")  # huggingface_hub's cache

METHODS = {
    "mol": "Mixture of Losses: cross-entropy on domain rows, KL divergence to the frozen base model on general rows",
    "cpt": "continued pre-training: cross-entropy on domain and general rows alike",
    "domain_only": "cross-entropy on domain rows only",
}
METRICS = {  # eval key -> what it is, in the order the card's table lists them
    "eval/domain_ppl": "Domain perplexity (held-out)",
    "eval/domain_ce": "Domain cross-entropy, nats/token (held-out)",
    "eval/general_ppl": "General perplexity (held-out)",
    "eval/general_kl": "KL to the base on held-out general text",
    "eval/qa_exact_match": "QA exact match",
}


def hub_name(reference: str | None) -> str | None:
    """``reference`` when it is a Hugging Face hub name (``org/model``) rather than a local path, else None."""
    if not reference or not _HUB_NAME.fullmatch(reference) or Path(reference).exists():
        return None
    return reference


def base_model_name(base_model: str) -> str:
    """The portable name of the base: a hub name given as such, the one its config records (``_name_or_path``, as
    transformers 4 saved it), or the one a Hugging Face cache path spells (``…/models--org--name/snapshots/…``);
    else ``base_model`` as given (a local path, which the service renames)."""
    if name := hub_name(base_model):
        return name
    recorded = _read_json(Path(base_model) / "config.json").get("_name_or_path")
    return hub_name(recorded if isinstance(recorded, str) else None) or cached_hub_name(base_model) or base_model


def cached_hub_name(path: str) -> str | None:
    """The hub name (``org/name``) of a directory in the Hugging Face cache (a snapshot, or a link to one), else
    None."""
    for candidate in (Path(path), Path(path).resolve()):
        if found := _HUB_CACHE.search(candidate.as_posix()):
            return found[1].replace("--", "/", 1)
    return None


def base_is_hub(card: Mapping[str, Any]) -> bool:
    """Whether the card's base is a Hugging Face hub name, which anyone can load, rather than a local model."""
    return bool(card.get("base_hub", hub_name(card["base_model"]) is not None))


def adapter_base(card: Mapping[str, Any]) -> str:
    """What a portable adapter's ``base_model_name_or_path`` says: the base's hub name, or for a local base a
    placeholder that no loader resolves (so a wrong model of the same name is never fetched in its place)."""
    if base_is_hub(card):
        return card["base_model"]
    return f"<local base model '{card['base_model']}': not on the Hugging Face hub; put its directory here>"


def base_license(base_model: str) -> str | None:
    """The license the base model's own card declares in its front matter, if it has one."""
    try:
        text = (Path(base_model) / CARD_FILE).read_text()
    except OSError:
        return None
    found = front_matter(text).get("license")
    return str(found) if found else None


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (``---`` ... ``---`` at its top), {} when it has none."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    if not match:
        return {}
    try:
        found = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return {}
    return found if isinstance(found, dict) else {}


def software_versions() -> dict[str, str]:
    """The installed version of each package a checkpoint depends on."""
    versions = {}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def dataset_entries(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each file the run read (domain, general, evaluation) with its sha256 (remembered beside the file by the token
    stores, so nothing is hashed twice; None for a file gone since: a card never fails a checkpoint); a general
    corpus sampled from the base has no file of the user's."""
    roles = [("domain", p) for p in spec["domain_data"]] + [("general", p) for p in spec["general_data"]]
    if spec.get("eval_data"):
        roles.append(("evaluation (QA)", spec["eval_data"]))
    entries = [{"role": role, "file": path, "sha256": _sha256_or_none(Path(path))}
               for role, path in roles]
    if spec.get("general_source") == "self":
        entries.append({"role": "general", "file": f"sampled from the base model ({spec['self_sample_tokens']:,} "
                                                   "tokens)", "sha256": None})
    return entries


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def card_evaluations(evaluations: Mapping[int, Mapping[str, float]], step: int) -> dict[str, dict[str, float]]:
    """The evaluations a card shows: the first (step 0: the base itself) and the latest at or before ``step``."""
    done = sorted(s for s in evaluations if s <= step)
    return {str(s): dict(evaluations[s]) for s in sorted({done[0], done[-1]})} if done else {}


def build_card(spec: Mapping[str, Any], step: int, evaluations: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
    """The card of a checkpoint at ``step`` of a run of ``spec`` (as JSON, its paths local) with its evaluations."""
    base = base_model_name(spec["base_model"])
    return {"name": spec["name"], "base_model": base, "base_hub": hub_name(base) is not None,
            "base_source": base_source(spec["base_model"], base), "license": base_license(spec["base_model"]),
            "method": spec["method"], "finetune": spec["finetune"],
            "step": step, "spec": dict(spec), "datasets": dataset_entries(spec),
            "evaluations": card_evaluations(evaluations, step), "software": software_versions()}


def base_source(given: str, name: str) -> str:
    """Where the base came from, as the card says it: the hub, or the local directory the run was ``given``."""
    return "the Hugging Face hub" if hub_name(name) else f"the local directory `{given}`"


def card_from_state(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """A checkpoint's card from its trainer state: the one it was written with, or (a checkpoint written before
    cards were) what the state tells: spec and step, no figures; None for a state without a spec."""
    if "model_card" in state:
        return dict(state["model_card"])
    if "spec" not in state:
        return None
    spec = state["spec"]
    return {"name": spec["name"], "base_model": spec["base_model"], "license": None, "method": spec["method"],
            "finetune": spec["finetune"], "step": state["step"], "spec": spec, "datasets": [], "evaluations": {},
            "software": {}}


def spec_references(spec: Mapping[str, Any]) -> list[str]:
    """The spec's references to models and files, in a fixed order: base model, domain, general, evaluation data."""
    refs = [spec["base_model"], *spec.get("domain_data", ()), *spec.get("general_data", ())]
    return [*refs, spec["eval_data"]] if spec.get("eval_data") else refs


def renamed(value: Any, names: Mapping[str, str]) -> Any:
    """``value`` (JSON: dicts, lists, strings...) with every occurrence of a key of ``names`` in its strings replaced
    by its value, longer keys first (a path before the directory holding it)."""
    if isinstance(value, str):
        for old in sorted(names, key=len, reverse=True):
            value = value.replace(old, names[old])
        return value
    if isinstance(value, Mapping):
        return {key: renamed(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [renamed(item, names) for item in value]
    return value


def reference_names(ran: Mapping[str, Any], submitted: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, str]:
    """Each path of the spec a run was given (``ran``) -> the reference the ``submitted`` spec holds in its place
    (model id, dataset id), as ``labels`` names it (a reference missing from ``labels`` stays as it is)."""
    pairs = list(zip(spec_references(ran), spec_references(submitted), strict=True))
    if ran.get("reference_model") and submitted.get("reference_model"):
        pairs.append((ran["reference_model"], submitted["reference_model"]))
    return {path: labels.get(ref, ref) for path, ref in pairs if path != ref}


def render_model_card(card: Mapping[str, Any], kind: str) -> str:
    """The README.md (Hugging Face model card: YAML front matter, then Markdown) of a ``kind`` directory."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    sections = [_header(card, kind), _base_section(card, kind), _lineage_section(card), _evaluation_section(card),
                _data_section(card),
                _spec_section(card), _software_section(card), _loading_section(card, kind)]
    return _front_matter(card, kind) + "\n\n".join(s for s in sections if s) + "\n"


def portable_files(model_dir: Path, card: Mapping[str, Any], kind: str, names: Mapping[str, str]) -> dict[str, bytes]:
    """The files of ``model_dir`` that would name a path of ``names``, rewritten: the card rendered from ``card``
    renamed, an adapter's ``adapter_config.json`` naming the card's base, and any other small JSON file holding such
    a path (a ``config.json`` whose ``_name_or_path`` an older transformers saved) with it renamed."""
    files = {}
    for path in sorted(Path(model_dir).glob("*.json")):
        if path.is_file() and path.stat().st_size <= SMALL_JSON and (text := path.read_text()) != (
                new := renamed(text, names)):
            files[path.name] = new.encode()
    card = renamed(dict(card), names)
    files[CARD_FILE] = render_model_card(card, kind).encode()
    config = _read_json(model_dir / ADAPTER_CONFIG)
    if config:
        config["base_model_name_or_path"] = adapter_base(card)
        files[ADAPTER_CONFIG] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    return files


def write_model_card(model_dir: Path, card: Mapping[str, Any] | None, kind: str) -> None:
    """Write the card of ``model_dir`` (replacing PEFT's template); nothing without a card."""
    if card is not None:
        (Path(model_dir) / CARD_FILE).write_text(render_model_card(card, kind))


def _front_matter(card: Mapping[str, Any], kind: str) -> str:
    tags = ["mol-studio", "continual-pretraining", card["method"].replace("_", "-")]
    tags += ["lora"] if card["finetune"] == "lora" else []
    head: dict[str, Any] = {"base_model": card["base_model"],
                            "library_name": "peft" if kind == "adapter" else "transformers", "tags": tags}
    if card.get("license"):
        head["license"] = card["license"]
    return "---\n" + yaml.safe_dump(head, sort_keys=False) + "---\n\n"


def _header(card: Mapping[str, Any], kind: str) -> str:
    spec = card["spec"]
    what = KIND_TEXT[kind]
    lora = f" (rank {spec['lora']['rank']}, alpha {spec['lora']['alpha']:g})" if card["finetune"] == "lora" else ""
    method = METHODS.get(card["method"], card["method"])
    if card["method"] == "mol":
        method += f" (`kl_weight` {weight_text(spec)}, {spec['kl_direction']} KL, domain:general rows " \
                  f"{spec['ratio']}, reference `{spec['reference']}`)"
    return (f"# {card['name']}, step {card['step']}\n\n"
            f"{what}{lora} of `{card['base_model']}` after {card['step']} of {spec['max_steps']} optimizer steps of "
            f"domain-adaptive continued pre-training with MoL Studio: "
            f"method `{card['method']}`, {method}.")


def weight_text(spec: Mapping[str, Any]) -> str:
    """The spec's λ in words: ``0.5``, or ``auto (target_general_kl 0.05)`` for the KL set-point."""
    if spec["kl_weight"] == "auto":
        target = spec.get("target_general_kl")
        return "auto" if target is None else f"auto (target_general_kl {target:g})"
    return f"{spec['kl_weight']:g}"


def _base_section(card: Mapping[str, Any], kind: str) -> str:
    base, source = card["base_model"], card.get("base_source")
    if base_is_hub(card):
        return f"## Base model\n\n`{base}`, from the Hugging Face hub."
    text = f"## Base model\n\n`{base}` is not on the Hugging Face hub" + (f": it is {source}." if source else ".")
    if kind == "adapter":
        text += (" Loading this adapter needs a copy of that model's directory: `adapter_config.json` names a "
                 "placeholder as its `base_model_name_or_path` (set it to that directory, or load the base yourself "
                 "as below).")
    return text


def _lineage_section(card: Mapping[str, Any]) -> str:
    """Where a model continued from another job's checkpoint comes from (``card["lineage"]``, which the service
    adds: parent job, its checkpoint, the original base model the KL anchors to by default); none otherwise."""
    lineage = card.get("lineage")
    if not lineage:
        return ""
    anchor = card["spec"].get("reference_model") or lineage["original_base_model"]
    return ("## Lineage\n\n"
            f"Continued from checkpoint `{lineage['parent_checkpoint']}` of job `{lineage['parent_job_id']}`; the "
            f"chain started from the base model `{lineage['original_base_model']}`.\n\n"
            "| Parent job | Parent checkpoint | Original base model | KL anchored to |\n|---|---|---|---|\n"
            f"| `{lineage['parent_job_id']}` | `{lineage['parent_checkpoint']}` | "
            f"`{lineage['original_base_model']}` | `{anchor}` |")


def _evaluation_section(card: Mapping[str, Any]) -> str:
    evaluations = {int(s): v for s, v in card.get("evaluations", {}).items()}
    if not evaluations:
        return "## Evaluation\n\nNo evaluation was recorded with this checkpoint."
    last = max(evaluations)
    base = evaluations.get(0, {})
    rows = _with_cross_entropy(evaluations[last])
    base_rows = _with_cross_entropy(base)
    at = f"step {last}" + (" (this checkpoint)" if last == card["step"] else f" (latest before step {card['step']})")
    lines = ["## Evaluation", "",
             "Held-out text the run never trained on; step 0 is the base model itself.", "",
             f"| Metric | Base (step 0) | {at} | Change |", "|---|---:|---:|---:|"]
    for key, value in rows.items():
        label = METRICS.get(key, key)
        before = base_rows.get(key)
        change = _number(value - before, signed=True) if None not in (value, before) and last != 0 else ""
        lines.append(f"| {label} | {_number(before)} | {_number(value)} | {change} |")
    return "\n".join(lines)


def _with_cross_entropy(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics with the domain cross-entropy (the log of its perplexity) beside its perplexity, in table order."""
    out = dict(metrics)
    if "eval/domain_ppl" in out and out["eval/domain_ppl"] and out["eval/domain_ppl"] > 0:
        out["eval/domain_ce"] = math.log(out["eval/domain_ppl"])
    order = list(METRICS)
    return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _data_section(card: Mapping[str, Any]) -> str:
    if not card.get("datasets"):
        return ""
    lines = ["## Data", "", "| Role | File | sha256 |", "|---|---|---|"]
    lines += [f"| {d['role']} | {_cell(d['file'])} | {_code(d.get('sha256'))} |" for d in card["datasets"]]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: its pipes escaped, its line breaks as spaces."""
    return " ".join(str(text).replace("|", "\\|").split())


def _code(text: str | None) -> str:
    return f"`{text}`" if text else "–"


def _spec_section(card: Mapping[str, Any]) -> str:
    return "## Training spec\n\n```yaml\n" + yaml.safe_dump(dict(card["spec"]), sort_keys=False) + "```"


def _software_section(card: Mapping[str, Any]) -> str:
    if not card.get("software"):
        return ""
    return "## Software\n\n" + "\n".join(f"- {name} {version}" for name, version in card["software"].items())


def _loading_section(card: Mapping[str, Any], kind: str) -> str:
    if kind == "adapter":
        base, comment = ((card["base_model"], "or a local copy's directory") if base_is_hub(card)
                         else ("path/to/the/base", f"the directory of `{card['base_model']}`: see Base model"))
        code = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, "
                "AutoTokenizer\n\n"
                "path = \"path/to/this/directory\"\n"
                f"base = AutoModelForCausalLM.from_pretrained(\"{base}\")  # {comment}\n"
                "model = PeftModel.from_pretrained(base, path)\n"
                "tokenizer = AutoTokenizer.from_pretrained(path)\n\n"
                "merged = model.merge_and_unload()  # plain transformers weights, the adapter folded in\n"
                "merged.save_pretrained(\"merged\")\ntokenizer.save_pretrained(\"merged\")")
        note = ("Loading needs the base model: pass its hub name or its directory. `mol export CHECKPOINT OUT "
                "--merged --base-model BASE_DIR` merges on the command line.")
    else:
        code = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "path = \"path/to/this/directory\"\n"
                "model = AutoModelForCausalLM.from_pretrained(path)\n"
                "tokenizer = AutoTokenizer.from_pretrained(path)")
        note = "A complete Hugging Face model directory: it loads without the base model."
    return f"## How to load\n\n{note}\n\n```python\n{code}\n```"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}

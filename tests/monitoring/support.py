"""What the monitoring files query, and a small PromQL reader.

Dashboards and alerts refer to metrics by name; these helpers collect every query so
the tests can parse them with the real ``promtool`` and compare their metric and label
names with what the running services export.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.conftest import repo_root

MONITORING = repo_root() / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
DASHBOARDS_DIR = MONITORING / "grafana" / "dashboards"
PROVISIONING_DIR = MONITORING / "grafana" / "provisioning"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def dashboards() -> dict[str, dict]:
    """Every dashboard file, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def compose_services() -> set[str]:
    """Service names of the compose stack: the host names the monitoring files use."""
    return set(load_yaml(repo_root() / "docker-compose.yml")["services"])


@dataclass(frozen=True)
class Query:
    where: str  # "alerts.yml: ServiceDown", "serving.json: Error rate"
    datasource: str  # datasource uid
    expr: str


def alert_queries() -> list[Query]:
    rules = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    return [Query(f"alerts.yml: {r['alert']}", "prometheus", r["expr"])
            for group in rules["groups"] for r in group["rules"]]


def dashboard_queries() -> list[Query]:
    """Every panel target's query, with the panel's (or the target's) datasource."""
    found = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel["datasource"])["uid"]
                found.append(Query(f"{name}: {panel['title']}", uid, target["expr"]))
    return found


LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)\s*$")


def variable_selectors() -> list[Query]:
    """The series selector inside each ``label_values(selector, label)`` variable query."""
    found = []
    for name, board in dashboards().items():
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = LABEL_VALUES.match(text)
            assert match and match["selector"], f"{name}: variable {variable['name']}: unexpected query {text!r}"
            found.append(Query(f"{name}: ${variable['name']}", variable["datasource"]["uid"], match["selector"]))
    return found


def promql_queries() -> list[Query]:
    return [q for q in alert_queries() + dashboard_queries() + variable_selectors() if q.datasource == "prometheus"]


# Grafana's global variables become a plausible range; our own ($model...) any string,
# they only ever appear inside regex matchers.
_GRAFANA_RANGES = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}")
_GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def substitute_grafana_variables(expr: str) -> str:
    """Make a dashboard query plain PromQL, as Grafana does before sending it."""
    expr = _GRAFANA_RANGES.sub("5m", expr)
    return _GRAFANA_VARIABLE.sub("x", expr)


# -- a small PromQL reader -------------------------------------------------------------------
# promtool parses; this only finds series selectors: which metric names and label matchers
# a query uses. Function and aggregation names are followed by "(" (or "by"/"without"),
# label lists follow by/without/on/ignoring/group_left/group_right, strings and [ranges]
# are skipped whole.
_TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*\b)
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},@])
  | (?P<space>\s+)
""", re.VERBOSE)
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"} | LABEL_LIST_KEYWORDS


@dataclass(frozen=True)
class Selector:
    metric: str | None  # None: a bare {__name__=~...} selector
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[position:position + 20]!r} in {expr!r}")
        position = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
    return tokens


def selectors(expr: str) -> list[Selector]:
    """Every series selector in a PromQL expression, in order."""
    tokens = _tokens(expr)
    found, i = [], 0

    def text(at: int) -> str | None:
        return tokens[at][1] if at < len(tokens) else None

    while i < len(tokens):
        kind, word = tokens[i]
        if kind == "ident" and word.lower() in LABEL_LIST_KEYWORDS and text(i + 1) == "(":
            i = tokens.index((("op", ")")), i) + 1  # a label list: (le, model)
        elif kind == "ident" and (text(i + 1) == "(" or word in AGGREGATIONS or word.lower() in KEYWORDS):
            i += 1  # function, aggregation or keyword
        elif kind == "ident" or word == "{":
            metric = word if kind == "ident" else None
            i += 1 if kind == "ident" else 0
            matchers: list[tuple[str, str, str]] = []
            if text(i) == "{":
                i += 1
                while text(i) != "}":
                    label, op, value = tokens[i][1], tokens[i + 1][1], tokens[i + 2][1]
                    matchers.append((label, op, _unquote(value)))
                    i += 3
                    if text(i) == ",":
                        i += 1
                i += 1
            found.append(Selector(metric, tuple(matchers)))
        else:
            i += 1
    return found


def _unquote(literal: str) -> str:
    """A PromQL string literal's value: Go escapes, which Python's match for these cases."""
    return literal[1:-1] if literal[0] == "`" else ast.literal_eval(literal)


def metric_names(queries: list[Query]) -> dict[str, list[str]]:
    """Metric name -> where it is used."""
    used: dict[str, list[str]] = {}
    for query in queries:
        for selector in selectors(substitute_grafana_variables(query.expr)):
            names = [selector.metric] if selector.metric else [v for l, o, v in selector.matchers if l == "__name__" and o == "="]
            for name in names:
                used.setdefault(name, []).append(query.where)
    return used


def stream_selectors(logql: str) -> Iterator[list[tuple[str, str, str]]]:
    """Label matchers of each ``{...}`` stream selector of a LogQL query."""
    for body in re.findall(r"\{([^}]*)\}", logql):
        yield [(m[0], m[1], m[2]) for m in re.findall(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"\s*,?', body)]

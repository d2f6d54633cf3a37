"""The end of a run or an evaluation in a few aligned lines: errors in percent, each skip reason once."""
from __future__ import annotations


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:6.2f} %"


def format_summary(result: dict) -> str:
    """``result`` (final.json, or what ``evaluate`` returns) as aligned lines: clean, PGD and verified error (the
    union, then each verifier), and one line per distinct skip reason naming the verifiers it skipped."""
    rows = [("clean error", result.get("clean_error")), ("PGD error", result.get("pgd_error")),
            ("verified error", result.get("verified_error"))]
    skipped = result.get("skipped") or {}
    rows += [(f"  by {method}", error) for method, error in (result.get("verified_error_by_method") or {}).items()
             if method not in skipped]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {_percent(value)}" for name, value in rows]
    reasons: dict[str, list[str]] = {}
    for method, reason in skipped.items():
        reasons.setdefault(reason, []).append(method)
    lines += [f"skipped {', '.join(methods)}: {reason}" for reason, methods in reasons.items()]
    if result.get("num_examples") is not None:
        lines.append(f"on {result['num_examples']} test examples at eps {result.get('eps', float('nan')):g}")
    return "\n".join(lines)

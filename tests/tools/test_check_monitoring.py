"""tools/check_monitoring.py's parsing: alert comparisons come off, unknown metric names are found."""
from tools import check_monitoring as cm


def test_without_comparison_keeps_the_left_side_only():
    assert cm.without_comparison("sum(rate(x[5m])) > 0.25") == "sum(rate(x[5m]))"
    assert cm.without_comparison('min(a{code=~"A|B"} / b) < 0.1') == 'min(a{code=~"A|B"} / b)'
    assert cm.without_comparison('up{job="adaptd"} == 0') == 'up{job="adaptd"}'
    assert cm.without_comparison("rate(x[5m])") == "rate(x[5m])"


def test_unknown_metric_names_are_reported():
    names = cm.known_metrics() | cm.BUILTIN
    assert "adaptd_inter_token_seconds_bucket" in names  # a histogram's series
    assert cm.unknown_metrics("sum(rate(adaptd_tokens_total[1m])) / sum(up)", names) == []
    assert cm.unknown_metrics("rate(adaptd_made_up_total[1m]) + adaptd_tokens_totl", names) == [
        "adaptd_made_up_total", "adaptd_tokens_totl"]


def test_the_shipped_dashboard_and_rules_use_known_metrics_only():
    names = cm.known_metrics() | cm.BUILTIN
    exprs = cm.expressions()
    assert len(exprs) > 30
    assert [q for _, q in exprs if cm.unknown_metrics(q, names)] == []

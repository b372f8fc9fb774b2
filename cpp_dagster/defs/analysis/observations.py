"""An asset observation recorded only when what it shows changed: the sensors that show
imagedb in the UI (the lab overview, the analysis pipelines) keep the digest of the last
text they recorded as their cursor."""

import hashlib

import dagster as dg


def observe_if_changed(
    context: dg.SensorEvaluationContext, key: dg.AssetKey, text: str, metadata: dict, unchanged: str
) -> dg.SensorResult | dg.SkipReason:
    """An observation of `key` with `metadata` when `text` differs from the last one recorded;
    otherwise SkipReason(`unchanged`)."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest == context.cursor:
        return dg.SkipReason(unchanged)
    return dg.SensorResult(asset_events=[dg.AssetObservation(asset_key=key, metadata=metadata)], cursor=digest)

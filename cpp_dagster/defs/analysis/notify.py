"""The `notify_lab` sensor: tells the lab of each analysis outcome, once (analysis/notify.py
drains imagedb's outbox). A sensor of its own, not a step of the run: a receiver that is
down or slow never holds an analysis up, and one that was down gets the outcome on a
later tick."""

import dagster as dg

from cpp_dagster.analysis import notify
from cpp_dagster.defs.resources import DeploymentResource, ImageDBResource


def build_notify_sensor(interval_s: int) -> dg.SensorDefinition:
    @dg.sensor(name="notify_lab", minimum_interval_seconds=interval_s, default_status=dg.DefaultSensorStatus.RUNNING)
    def notify_lab(context: dg.SensorEvaluationContext, imagedb: ImageDBResource, deployment: DeploymentResource):
        """POSTs each analysis outcome (finished, failed, cancelled) to CPP_NOTIFY_WEBHOOK_URL
        as JSON and to the Slack incoming webhook CPP_NOTIFY_SLACK_URL, once each; a
        destination that fails is tried again on a later tick, with a backoff."""
        report = notify.drain(imagedb.db(), deployment.settings)
        for line in report.sent:
            context.log.info(line)
        for line in report.waiting:
            context.log.warning(line)
        return dg.SkipReason(report.summary())

    return notify_lab

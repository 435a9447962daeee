using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

/// <summary>
/// The Coordinator's meter (/metrics exports it as Prometheus text). Counted from the events a saga persists on this
/// node, never from a recovery's replay, so a restart does not count a migration twice; the active gauge is the sagas
/// of this node that have not finished (a cluster's total is the sum over its Coordinators).
/// </summary>
public static class MigrationMetrics
{
    public const string MeterName = "LiveMigration.Coordinator";

    /// <summary>The meter itself; reading it (as the Coordinator's startup does) creates every instrument, so /metrics lists them from the start.</summary>
    public static Meter Meter { get; } = new(MeterName);
    private static readonly ConcurrentDictionary<MigrationId, byte> Active = new();

    private static readonly Counter<long> Completed = Meter.CreateCounter<long>("lsm.migrations.completed", description: "Migrations that completed (every disk moved)");
    private static readonly Counter<long> Failed = Meter.CreateCounter<long>("lsm.migrations.failed", description: "Migrations that failed and were rolled back");
    private static readonly Counter<long> Cancelled = Meter.CreateCounter<long>("lsm.migrations.cancelled", description: "Migrations cancelled by an operator and rolled back");
    private static readonly Counter<long> BytesCopied = Meter.CreateCounter<long>("lsm.migration.copied", unit: "By",
        description: "Bytes the hosts reported copied by finished steps (mirror, internal volume copies), by step");
    // Seconds, from a pivot's tens of milliseconds to a long copy's minutes (the exporter's defaults are made for milliseconds).
    private static readonly InstrumentAdvice<double> SecondsBuckets = new()
    {
        HistogramBucketBoundaries = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
    };
    private static readonly Histogram<double> StepDuration = Meter.CreateHistogram("lsm.migration.step.duration", unit: "s",
        description: "How long each step attempt took from its sending to its result, by step and outcome", tags: null, advice: SecondsBuckets);
    private static readonly Histogram<double> PivotStall = Meter.CreateHistogram("lsm.migration.pivot.stall", unit: "s",
        description: "The pivot step's duration as the saga saw it (sending the pivot to the host's answer, messaging and the host's " +
                     "records included); lsm.migration.switch.stall is the host's own timing of the switch", tags: null, advice: SecondsBuckets);
    // Milliseconds matter here: the target is a stall under 20 ms.
    private static readonly InstrumentAdvice<double> StallBuckets = new()
    {
        HistogramBucketBoundaries = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    };
    private static readonly Histogram<double> SwitchStall = Meter.CreateHistogram("lsm.migration.switch.stall", unit: "s",
        description: "How long the VM's host held the drive for a switch (pivot, live snapshot, backing switch), timed on the host around " +
                     "the hypervisor's switching command: the guest's I/O waits at most this long. By step", tags: null, advice: StallBuckets);

    static MigrationMetrics() =>
        Meter.CreateObservableGauge("lsm.migrations.active", () => Active.Count, description: "Migrations of this Coordinator that have not finished");

    /// <summary>The saga's state after recovery or a change: tracks whether it counts as active.</summary>
    public static void Track(MigrationState state)
    {
        if (state.Status is MigrationStatus.New || state.Status.IsFinished) Active.TryRemove(state.Id, out _);
        else Active[state.Id] = 0;
    }

    /// <summary>The saga stopped (passivated, or its node leaves): another incarnation tracks it from here.</summary>
    public static void Forget(MigrationId id) => Active.TryRemove(id, out _);

    /// <summary>One event persisted by a live saga, with the state before it.</summary>
    public static void Record(MigrationState before, IMigrationEvent e)
    {
        switch (e)
        {
            case MigrationCompleted:
                Completed.Add(1);
                break;
            case MigrationFailed:
                Failed.Add(1);
                break;
            case MigrationCancelled:
                Cancelled.Add(1);
                break;
            case StepCompleted done:
                if (done.Outcome.BytesCopied > 0) BytesCopied.Add(done.Outcome.BytesCopied, new KeyValuePair<string, object?>("step", done.Step.ToString()));
                RecordDuration(before, done.Image, done.Step, done.At, "completed");
                if (done.Outcome.SwitchStallMs is { } stallMs)
                    SwitchStall.Record(stallMs / 1000, new KeyValuePair<string, object?>("step", done.Step.ToString()));
                break;
            case StepFailed failed:
                RecordDuration(before, failed.Image, failed.Step, failed.At, "failed");
                break;
        }
    }

    private static void RecordDuration(MigrationState before, ImageId image, MigrationStep step, DateTimeOffset endedAt, string outcome)
    {
        var disk = before.Disks.FirstOrDefault(d => d.Image == image);
        if (disk is null || disk.StepTimings.Count == 0 || disk.StepTimings[^1] is not { EndedAt: null } timing || timing.Step != step) return;
        var seconds = Math.Max(0, (endedAt - timing.StartedAt).TotalSeconds);
        var tags = new TagList { { "step", step.ToString() }, { "outcome", outcome } };
        StepDuration.Record(seconds, tags);
        if (step == MigrationStep.Pivot && outcome == "completed") PivotStall.Record(seconds);
    }
}

namespace LiveMigration.HostNode.Storage.Sim;

/// <summary>How a <see cref="SimStorageDomain"/> models time and faults.</summary>
public sealed record SimStorageOptions
{
    /// <summary>Modelled copy rate between domains, in bytes per modelled second. The default (1 GiB/s) keeps test copies in milliseconds.</summary>
    public long CopyBytesPerSecond { get; init; } = 1L << 30;

    /// <summary>Real seconds per modelled second: 1 = real time, 0.01 = a hundred times faster, 0 = no waiting at all.</summary>
    public double TimeScale { get; init; } = 1.0;

    /// <summary>The clock waits and creation times are taken from.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>A copy reports progress (and may be hit by a fault) after each step of at least this many bytes.</summary>
    public long ProgressStepBytes { get; init; } = 4L << 20;

    /// <summary>Faults tests inject; shared with whoever holds the options.</summary>
    public SimFaults Faults { get; init; } = new();
}

using LiveMigration.HostNode.Storage.Sim;

namespace LiveMigration.HostNode.Hypervisor.Sim;

/// <summary>How a <see cref="SimHypervisor"/> models its block jobs and faults.</summary>
public sealed record SimHypervisorOptions
{
    /// <summary>What a mirror copies per modelled second when no speed limit is lower. The default (1 GiB/s) makes small test mirrors READY in milliseconds.</summary>
    public long MirrorBytesPerSecond { get; init; } = 1L << 30;

    /// <summary>
    /// Bytes per modelled second the guest dirties in a mirrored drive. In background mode they add to
    /// what is left to copy (a guest that dirties faster than the mirror copies keeps it from READY);
    /// in write-blocking mode they are mirrored as they are written.
    /// </summary>
    public long GuestDirtyBytesPerSecond { get; init; }

    /// <summary>Real seconds per modelled second: 1 = real time, 0.01 = a hundred times faster, 0 = a mirror is READY on its first tick.</summary>
    public double TimeScale { get; init; } = 1.0;

    /// <summary>The clock the jobs tick on.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>Real time between two progress updates of a running job.</summary>
    public TimeSpan JobTick { get; init; } = TimeSpan.FromMilliseconds(5);

    /// <summary>
    /// Faults tests inject, by <see cref="IHypervisor"/> method name. On a call: Fail throws its code; Die kills the
    /// VM's QEMU (VM_NOT_RUNNING); Stall blocks the call. On <c>StartMirrorAsync</c> Die, OutOfSpace and Stall hit
    /// the job at their fraction of the data: QEMU dies, the job fails (BlockJobFailed), or it stops progressing until released.
    /// </summary>
    public SimFaults Faults { get; init; } = new();
}

using LiveMigration.HostNode.Concurrency;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Guest;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Management;

/// <summary>
/// The guest workloads an operator started on this host's VMs: one <see cref="GuestWorkload"/> per drive, writing
/// through the drive's NBD export, with its <see cref="WriteLedger"/> kept in <c>&lt;data dir&gt;/guest/&lt;vm&gt;/&lt;image&gt;.ledger</c>
/// (appended to by every run), so a verify later, or after a host restart, checks every write ever acknowledged.
/// </summary>
public sealed class GuestIo(string dataDirectory)
{
    public const int MaxSeconds = 24 * 3600;

    private sealed class Run(VmId vm, long bytesPerSecond, int seconds, int flushIntervalMs, bool fua, IReadOnlyList<GuestWorkload> workloads)
    {
        public int FlushIntervalMs { get; } = flushIntervalMs;
        public bool Fua { get; } = fua;
        public VmId Vm { get; } = vm;
        public long BytesPerSecond { get; } = bytesPerSecond;
        public int Seconds { get; } = seconds;
        public IReadOnlyList<GuestWorkload> Workloads { get; } = workloads;
        public GuestIoStatus? Final { get; set; }
        public Task<GuestIoStatus>? Stopping { get; set; }
    }

    private readonly object _gate = new();
    private readonly Dictionary<VmId, Run> _runs = new();
    // The VM manager runs commands side by side: two starts on one VM must not both pass the "already runs" check.
    private readonly KeyedLocks<VmId> _starts = new();

    public string LedgerPath(VmId vm, ImageId drive) => Path.Combine(dataDirectory, "guest", vm.ToString(), $"{drive}.ledger");

    /// <summary>Starts writing on every drive of the running VM, the rate shared among them; stops by itself after <paramref name="seconds"/> (0 = until stopped).</summary>
    /// <param name="flushIntervalMs">How often each drive's guest flushes (0 = never); a drive whose export cannot flush is refused.</param>
    /// <param name="fua">Every write with FUA; a drive whose export does not take FUA is refused.</param>
    public async Task<GuestIoStatus> StartAsync(VmInfo vm, long bytesPerSecond, int seconds,
        int flushIntervalMs = StartGuestIo.DefaultFlushIntervalMs, bool fua = false, CancellationToken ct = default)
    {
        if (flushIntervalMs is < 0 or > StartGuestIo.MaxFlushIntervalMs)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"the flush interval must be between 0 (never) and {StartGuestIo.MaxFlushIntervalMs} ms, got {flushIntervalMs} ms");
        if (bytesPerSecond < 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the rate must be 0 (unlimited) or positive, got {bytesPerSecond} bytes/s");
        if (seconds is < 0 or > MaxSeconds)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"seconds must be between 0 (until stopped) and {MaxSeconds}, got {seconds}");
        if (!vm.Running || vm.Drives.Count == 0)
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm.Id} ({vm.Name}) is not running: start it before its guest I/O");
        using var starting = await _starts.LockAsync(vm.Id, ct);
        Run? previous;
        lock (_gate) _runs.TryGetValue(vm.Id, out previous);
        if (previous is not null && previous.Final is null)
        {
            if (previous.Workloads.Any(w => w.Stats.Running))
                throw new OperationFailedException(ErrorCodes.Conflict, $"guest I/O already runs on VM {vm.Id} ({vm.Name})");
            // It stopped by itself (an error): close its ledgers before a new run appends to them.
            await StopAsync(previous);
        }
        var perDrive = bytesPerSecond == 0 ? 0 : Math.Max(1, bytesPerSecond / vm.Drives.Count);
        var workloads = new List<GuestWorkload>();
        try
        {
            foreach (var drive in vm.Drives)
            {
                var ledger = LedgerPath(vm.Id, drive.Image);
                Directory.CreateDirectory(Path.GetDirectoryName(ledger)!);
                var workload = new GuestWorkload(new GuestWorkloadOptions(drive.GuestSocket, drive.ExportName, drive.Image,
                    RegionOffset: 0, RegionLength: 0, ledger, RateBytesPerSecond: perDrive, ForceUnitAccess: fua,
                    FlushInterval: TimeSpan.FromMilliseconds(flushIntervalMs), ContinueAfterWritten: true));
                await workload.StartAsync(ct);
                workloads.Add(workload);
            }
        }
        catch
        {
            foreach (var started in workloads) await started.DisposeAsync();
            throw;
        }
        var run = new Run(vm.Id, bytesPerSecond, seconds, flushIntervalMs, fua, workloads);
        lock (_gate) _runs[vm.Id] = run;
        if (seconds > 0) _ = StopLaterAsync(run, TimeSpan.FromSeconds(seconds));
        return StatusOf(run);
    }

    private async Task StopLaterAsync(Run run, TimeSpan after)
    {
        await Task.Delay(after);
        await StopAsync(run);
    }

    /// <summary>Stops the VM's workloads (flushing what was acknowledged); null when none ever ran here.</summary>
    public async Task<GuestIoStatus?> StopAsync(VmId vm)
    {
        Run? run;
        lock (_gate) _runs.TryGetValue(vm, out run);
        return run is null ? null : await StopAsync(run);
    }

    private Task<GuestIoStatus> StopAsync(Run run)
    {
        lock (_gate)
        {
            run.Stopping ??= StopCoreAsync(run);
            return run.Stopping;
        }
    }

    private async Task<GuestIoStatus> StopCoreAsync(Run run)
    {
        foreach (var workload in run.Workloads) await workload.DisposeAsync();
        var final = StatusOf(run);
        lock (_gate) run.Final = final;
        return final;
    }

    public GuestIoStatus Status(VmId vm)
    {
        Run? run;
        lock (_gate) _runs.TryGetValue(vm, out run);
        return run is null
            ? new GuestIoStatus(vm, false, 0, 0, 0, 0, 0, 0, null, 0)
            : run.Final ?? StatusOf(run);
    }

    /// <summary>The ledger a running workload writes to, or null when none runs on that drive.</summary>
    public WriteLedger? RunningLedger(VmId vm, ImageId drive)
    {
        lock (_gate)
        {
            return _runs.TryGetValue(vm, out var run) && run.Final is null && run.Stopping is null
                ? run.Workloads.FirstOrDefault(w => w.Options.Drive == drive)?.Ledger
                : null;
        }
    }

    private static GuestIoStatus StatusOf(Run run)
    {
        var stats = run.Workloads.Select(w => w.Stats).ToList();
        return new GuestIoStatus(run.Vm,
            Running: stats.Any(s => s.Running),
            run.BytesPerSecond,
            run.Seconds,
            stats.Sum(s => s.Writes),
            stats.Sum(s => s.Bytes),
            stats.Sum(s => s.Errors),
            stats.Count == 0 ? 0 : stats.Max(s => s.Elapsed.TotalSeconds),
            stats.Select(s => s.LastError).FirstOrDefault(e => e is not null),
            run.Workloads.Sum(w => w.Ledger.AcknowledgedWrites),
            stats.Sum(s => s.DurableWrites),
            run.FlushIntervalMs,
            run.Fua,
            stats.Sum(s => s.Flushes));
    }
}

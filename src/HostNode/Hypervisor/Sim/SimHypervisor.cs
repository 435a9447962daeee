using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor.Sim;

/// <summary>
/// An in-memory hypervisor with the QMP adapter's contract: VMs, drives as chains of layers, mirror jobs
/// with modelled progress and readiness, pivot, cancel, live snapshot and backing switch. The VMs live in a
/// <see cref="SimHost"/>, so a new instance on the same host adopts them as a restarted HostNode would.
/// Layer sizes come from the pool's domains (a mirror copies the source leaf's allocated bytes).
/// </summary>
public sealed class SimHypervisor : IHypervisor
{
    private readonly SimHost _host;
    private readonly StoragePool _pool;
    /// <summary>The VMs this instance started or adopted; guarded by the host's gate.</summary>
    private readonly HashSet<VmId> _known = new();
    private bool _disposed;

    public SimHypervisor(SimHost host, StoragePool pool, SimHypervisorOptions? options = null)
    {
        _host = host;
        _pool = pool;
        Options = options ?? new SimHypervisorOptions();
        if (Options.MirrorBytesPerSecond <= 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"mirror rate must be positive, got {Options.MirrorBytesPerSecond} bytes/s");
        if (Options.GuestDirtyBytesPerSecond < 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"guest dirty rate must be 0 or more, got {Options.GuestDirtyBytesPerSecond} bytes/s");
        if (Options.TimeScale < 0 || double.IsNaN(Options.TimeScale))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"time scale must be 0 or more, got {Options.TimeScale}");
        if (Options.JobTick <= TimeSpan.Zero)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"job tick must be positive, got {Options.JobTick}");
        _host.EventRaised += OnHostEvent;
    }

    public string Kind => "sim";
    public SimHypervisorOptions Options { get; }
    public SimFaults Faults => Options.Faults;
    public SimHost Host => _host;

    public event Action<HypervisorEvent>? EventRaised;

    public ValueTask DisposeAsync()
    {
        // like a HostNode going away: the QEMUs and their jobs keep running on the host
        _host.EventRaised -= OnHostEvent;
        lock (_host.Gate) _disposed = true;
        return ValueTask.CompletedTask;
    }

    // ---- VMs ----

    public async Task<VmInfo> StartVmAsync(VmSpec spec, CancellationToken ct = default)
    {
        lock (_host.Gate)
        {
            ThrowIfDisposedLocked();
            if (_host.Vms.TryGetValue(spec.Id, out var running) && running.Running)
            {
                _known.Add(spec.Id);
                return running.ToInfo();
            }
        }
        await EnterAsync(nameof(StartVmAsync), spec.Id, ct);
        if (spec.Drives.GroupBy(d => d.Image).FirstOrDefault(g => g.Count() > 1) is { } twice)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"VM {spec.Id} names image {twice.Key} as {twice.Count()} drives");
        foreach (var drive in spec.Drives)
        {
            if (drive.Layers.Count == 0)
                throw new OperationFailedException(ErrorCodes.InvalidArgument, $"drive {drive.Image} of VM {spec.Id} has no layers");
            foreach (var layer in drive.Layers) await DescribeLayerAsync(drive.Image, layer, ct);
        }

        lock (_host.Gate)
        {
            ThrowIfDisposedLocked();
            if (_host.Vms.TryGetValue(spec.Id, out var running) && running.Running)
            {
                _known.Add(spec.Id);
                return running.ToInfo();
            }
            var drives = spec.Drives.Select(d => new SimDrive(d.Image, d.Layers.ToList())).ToList();
            var vm = new SimVm(spec.Id, spec.Name, _host.NextPidLocked(), spec.MemoryMiB, drives);
            _host.Vms[spec.Id] = vm;
            _known.Add(spec.Id);
            _host.RaiseLocked(new VmStarted(spec.Id));
            return vm.ToInfo();
        }
    }

    public async Task StopVmAsync(VmId vm, CancellationToken ct = default)
    {
        await EnterAsync(nameof(StopVmAsync), vm, ct);
        lock (_host.Gate)
        {
            ThrowIfDisposedLocked();
            if (!_known.Contains(vm))
                throw new OperationFailedException(ErrorCodes.VmNotFound, $"VM {vm} is not known to sim host {_host.Name}");
            // gone already (and maybe forgotten by another instance's adoption): stopping it again is done
            if (_host.Vms.TryGetValue(vm, out var v)) _host.StopLocked(v, "stopped on request");
        }
    }

    public Task<IReadOnlyList<VmInfo>> AdoptRunningVmsAsync(CancellationToken ct = default)
    {
        lock (_host.Gate)
        {
            ThrowIfDisposedLocked();
            foreach (var dead in _host.Vms.Values.Where(v => !v.Running).Select(v => v.Id).ToList()) _host.Vms.Remove(dead);
            _known.Clear();
            foreach (var id in _host.Vms.Keys) _known.Add(id);
            return Task.FromResult<IReadOnlyList<VmInfo>>(_host.Vms.Values.Select(v => v.ToInfo()).ToList());
        }
    }

    public Task<IReadOnlyList<VmInfo>> ListVmsAsync(CancellationToken ct = default)
    {
        lock (_host.Gate)
        {
            ThrowIfDisposedLocked();
            return Task.FromResult<IReadOnlyList<VmInfo>>(_known
                .Select(id => _host.Vms.TryGetValue(id, out var v) ? v.ToInfo() : new VmInfo(id, "", null, false, []))
                .ToList());
        }
    }

    public Task<VmInfo> DescribeVmAsync(VmId vm, CancellationToken ct = default)
    {
        lock (_host.Gate) return Task.FromResult(RequireRunningLocked(vm).ToInfo());
    }

    // ---- pre-copy ----

    public async Task<BlockJobInfo> StartMirrorAsync(MirrorRequest request, CancellationToken ct = default)
    {
        var (vmId, image) = (request.Vm, request.Drive);
        if (request.SpeedBytesPerSecond < 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"mirror of drive {image} of VM {vmId}: speed must be 0 or more, got {request.SpeedBytesPerSecond}");
        ChainLayer sourceLeaf;
        lock (_host.Gate)
        {
            var drive = RequireDriveLocked(vmId, image);
            if (RepeatedMirrorLocked(drive, request) is { } same) return same;
            sourceLeaf = drive.Layers[^1];
        }

        var fault = Faults.Take(nameof(StartMirrorAsync));
        switch (fault)
        {
            case SimFault.Fail f:
                throw new OperationFailedException(f.Code, $"injected fault: mirror of drive {image} of VM {vmId} failed to start");
        }
        var source = await DescribeLayerAsync(image, sourceLeaf, ct);
        var destination = await DescribeLayerAsync(image, request.DestinationLeaf, ct);
        if (request.DestinationLeaf.Path == sourceLeaf.Path)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"mirror of drive {image} of VM {vmId}: the destination {request.DestinationLeaf.Path} is the source leaf");
        if (source.Capacity != destination.Capacity)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"mirror of drive {image} of VM {vmId}: the destination leaf is {destination.Capacity} bytes, the source leaf {source.Capacity}");

        lock (_host.Gate)
        {
            var vm = RequireRunningLocked(vmId);
            var drive = RequireDriveLocked(vmId, image);
            if (RepeatedMirrorLocked(drive, request) is { } same) return same;
            var job = new SimMirrorJob($"mirror-{image}", request.DestinationLeaf, request.Mode, request.SpeedBytesPerSecond, source.AllocatedBytes);
            drive.Job = job;
            drive.LastJob = null;
            job.Loop = Task.Run(() => RunMirrorAsync(_host, vm, drive, job, fault, Options));
            return job.ToInfo(image);
        }
    }

    public Task<BlockJobInfo?> GetBlockJobAsync(VmId vm, ImageId drive, CancellationToken ct = default)
    {
        lock (_host.Gate) return Task.FromResult(RequireDriveLocked(vm, drive).Job?.ToInfo(drive));
    }

    public Task<string?> MirrorTargetAsync(VmId vm, ImageId drive, CancellationToken ct = default)
    {
        lock (_host.Gate) return Task.FromResult(RequireDriveLocked(vm, drive).Job?.Destination.Path);
    }

    public async Task SetJobSpeedAsync(VmId vm, ImageId drive, long bytesPerSecond, CancellationToken ct = default)
    {
        await EnterAsync(nameof(SetJobSpeedAsync), vm, ct);
        if (bytesPerSecond < 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"speed of the job on drive {drive} of VM {vm} must be 0 or more, got {bytesPerSecond}");
        lock (_host.Gate)
        {
            var job = RequireDriveLocked(vm, drive).Job
                ?? throw new OperationFailedException(ErrorCodes.NoSuchJob, $"drive {drive} of VM {vm} has no block job to set the speed of");
            job.SpeedBytesPerSecond = bytesPerSecond;
        }
    }

    public async Task<DriveState> PivotAsync(VmId vm, ImageId drive, IReadOnlyList<ChainLayer> destinationBacking, CancellationToken ct = default)
    {
        lock (_host.Gate)
        {
            var d = RequireDriveLocked(vm, drive);
            if (d.Job is null && d.LastJob is { Phase: BlockJobPhase.Completed } && OpensExactly(d, destinationBacking.Append(d.Layers[^1])))
                return d.ToState();
        }
        await EnterAsync(nameof(PivotAsync), vm, ct);
        foreach (var layer in destinationBacking) await DescribeLayerAsync(drive, layer, ct);

        lock (_host.Gate)
        {
            var d = RequireDriveLocked(vm, drive);
            if (d.Job is null && d.LastJob is { Phase: BlockJobPhase.Completed } && OpensExactly(d, destinationBacking.Append(d.Layers[^1])))
                return d.ToState();
            var job = d.Job ?? throw new OperationFailedException(ErrorCodes.NoSuchJob, $"drive {drive} of VM {vm} has no mirror to pivot");
            if (job.Phase != BlockJobPhase.Ready)
                throw new OperationFailedException(ErrorCodes.NoSuchJob,
                    $"mirror {job.JobId} of VM {vm} is {job.Phase}, not READY: {job.Offset} of {job.Length} bytes copied");
            job.Phase = BlockJobPhase.Completed;
            job.Offset = job.Length;
            d.LastJob = job.ToInfo(drive);
            d.StopJob();
            d.Layers = destinationBacking.Append(job.Destination).ToList();
            _host.RaiseLocked(new BlockJobCompleted(vm, drive, job.JobId));
            return d.ToState() with { SwitchDuration = TimeSpan.Zero }; // the sim models no stall
        }
    }

    public async Task<DriveState> CancelMirrorAsync(VmId vm, ImageId drive, CancellationToken ct = default)
    {
        lock (_host.Gate)
        {
            var d = RequireDriveLocked(vm, drive);
            if (d.Job is null) return d.ToState();
        }
        await EnterAsync(nameof(CancelMirrorAsync), vm, ct);
        lock (_host.Gate)
        {
            var d = RequireDriveLocked(vm, drive);
            if (d.Job is not { } job) return d.ToState();
            job.Phase = BlockJobPhase.Cancelled;
            d.LastJob = job.ToInfo(drive);
            d.StopJob();
            _host.RaiseLocked(new BlockJobCancelled(vm, drive, job.JobId));
            return d.ToState();
        }
    }

    // ---- post-copy ----

    public async Task<DriveState> LiveSnapshotAsync(VmId vm, ImageId drive, ChainLayer newLeaf, CancellationToken ct = default)
    {
        ChainLayer currentLeaf;
        lock (_host.Gate)
        {
            var d = RequireDriveLocked(vm, drive);
            if (d.Layers[^1].Path == newLeaf.Path) return d.ToState();
            currentLeaf = d.Layers[^1];
        }
        await EnterAsync(nameof(LiveSnapshotAsync), vm, ct);
        var info = await DescribeLayerAsync(drive, newLeaf, ct);
        if (info.Parent != currentLeaf.Volume)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"snapshot of drive {drive} of VM {vm}: the new leaf {newLeaf.Volume} has parent {info.Parent?.ToString() ?? "none"}, not the current leaf {currentLeaf.Volume}");

        lock (_host.Gate)
        {
            var d = RequireDriveLocked(vm, drive);
            if (d.Layers[^1].Path == newLeaf.Path) return d.ToState();
            if (d.Layers[^1] != currentLeaf)
                throw new OperationFailedException(ErrorCodes.Conflict, $"drive {drive} of VM {vm} changed its leaf to {d.Layers[^1].Path} during the snapshot");
            if (d.Job is { } job)
                throw new OperationFailedException(ErrorCodes.Conflict, $"drive {drive} of VM {vm} has block job {job.JobId} ({job.Phase}); no snapshot while it runs");
            d.Layers.Add(newLeaf);
            d.LastJob = null;
            return d.ToState() with { SwitchDuration = TimeSpan.Zero };
        }
    }

    public async Task<DriveState> SwitchBackingChainAsync(VmId vm, ImageId drive, IReadOnlyList<ChainLayer> newBacking, CancellationToken ct = default)
    {
        lock (_host.Gate)
        {
            var d = RequireDriveLocked(vm, drive);
            if (OpensExactly(d, newBacking.Append(d.Layers[^1]))) return d.ToState();
            var currentIds = d.Layers.Take(d.Layers.Count - 1).Select(l => l.Volume.Volume);
            if (!currentIds.SequenceEqual(newBacking.Select(l => l.Volume.Volume)))
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"drive {drive} of VM {vm}: the new backing ({string.Join(", ", newBacking.Select(l => l.Volume.Volume))}) " +
                    $"is not a copy of the current one ({string.Join(", ", currentIds)})");
        }
        await EnterAsync(nameof(SwitchBackingChainAsync), vm, ct);
        foreach (var layer in newBacking)
        {
            var info = await DescribeLayerAsync(drive, layer, ct);
            if (info.Legality == Legality.Illegal)
                throw new OperationFailedException(ErrorCodes.Conflict, $"drive {drive} of VM {vm}: the new backing layer {layer.Volume} is ILLEGAL (its copy is not complete)");
        }

        lock (_host.Gate)
        {
            var d = RequireDriveLocked(vm, drive);
            if (d.Job is { } job)
                throw new OperationFailedException(ErrorCodes.Conflict, $"drive {drive} of VM {vm} has block job {job.JobId} ({job.Phase}); no backing switch while it runs");
            d.Layers = newBacking.Append(d.Layers[^1]).ToList();
            return d.ToState() with { SwitchDuration = TimeSpan.Zero };
        }
    }

    // ---- the mirror job ----

    /// <summary>
    /// The simulated QEMU's mirror: each tick copies what the rate (and speed limit) allows while the
    /// guest dirties more, turns READY when the copy has caught up, and meets its injected fault.
    /// Runs on the host, not on this instance, so it outlives a restarted hypervisor.
    /// </summary>
    private static async Task RunMirrorAsync(SimHost host, SimVm vm, SimDrive drive, SimMirrorJob job, SimFault? fault, SimHypervisorOptions options)
    {
        var time = options.TimeProvider;
        var stop = job.Stop.Token;
        var last = time.GetTimestamp();
        try
        {
            while (true)
            {
                if (options.TimeScale > 0) await Task.Delay(options.JobTick, time, stop);
                else await Task.Yield();
                var now = time.GetTimestamp();
                var modelledSeconds = options.TimeScale > 0 ? time.GetElapsedTime(last, now).TotalSeconds / options.TimeScale : double.PositiveInfinity;
                last = now;

                SimFault? hit = null;
                var idle = false;
                lock (host.Gate)
                {
                    if (drive.Job != job || !vm.Running) return;
                    if (!double.IsInfinity(modelledSeconds))
                    {
                        var dirtied = (long)Math.Min(options.GuestDirtyBytesPerSecond * modelledSeconds, long.MaxValue / 4);
                        job.Length += dirtied;
                        // write-blocking mirrors each guest write as it happens
                        if (job.Mode == CopyMode.WriteBlocking) job.Offset += dirtied;
                    }
                    var rate = job.SpeedBytesPerSecond > 0 ? Math.Min(options.MirrorBytesPerSecond, job.SpeedBytesPerSecond) : options.MirrorBytesPerSecond;
                    var copied = double.IsInfinity(modelledSeconds) ? long.MaxValue : (long)Math.Min(rate * modelledSeconds, long.MaxValue / 4);
                    job.Offset = job.Length - job.Offset <= copied ? job.Length : job.Offset + copied;

                    if (fault is not null && job.Offset >= fault.AtFraction * job.InitialLength)
                    {
                        hit = fault;
                        fault = null;
                        if (hit is SimFault.Stall) job.Offset = Math.Min(job.Offset, (long)(hit.AtFraction * job.InitialLength));
                    }
                    switch (hit)
                    {
                        case SimFault.Die:
                            host.StopLocked(vm, $"injected fault: QEMU died during mirror {job.JobId} at {job.Offset} of {job.Length} bytes");
                            return;
                        case SimFault.OutOfSpace:
                            var error = $"No space left on device: mirror {job.JobId} failed at {job.Offset} of {job.Length} bytes";
                            job.Phase = BlockJobPhase.Failed;
                            drive.LastJob = job.ToInfo(drive.Image, error);
                            drive.StopJob();
                            host.RaiseLocked(new BlockJobFailed(vm.Id, drive.Image, job.JobId, error));
                            return;
                    }
                    if (hit is null && job.Phase == BlockJobPhase.Running && job.Offset >= job.Length)
                    {
                        job.Phase = BlockJobPhase.Ready;
                        host.RaiseLocked(new BlockJobReady(vm.Id, drive.Image, job.JobId));
                    }
                    // Without modelled time nothing changes after READY (no guest dirties, no bytes flow): the job waits
                    // for its end instead of yielding in a loop, which spun a core for every mirror waiting for its pivot.
                    idle = options.TimeScale == 0 && hit is null && job.Phase == BlockJobPhase.Ready;
                }
                if (idle)
                {
                    await Task.Delay(Timeout.Infinite, stop);
                    return;
                }
                if (hit is SimFault.Stall stall)
                {
                    await stall.Handle.BlockAsync(stop);
                    last = time.GetTimestamp();
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // the job was completed, cancelled, or its QEMU died
        }
    }

    // ---- helpers ----

    private void OnHostEvent(HypervisorEvent e)
    {
        bool mine;
        lock (_host.Gate) mine = !_disposed && _known.Contains(e.Vm);
        if (mine) EventRaised?.Invoke(e);
    }

    /// <summary>Applies an injected fault on entry: Fail throws, Die kills the VM's QEMU, Stall waits for its release.</summary>
    private async Task EnterAsync(string operation, VmId vm, CancellationToken ct)
    {
        switch (Faults.Take(operation))
        {
            case SimFault.Fail f:
                throw new OperationFailedException(f.Code, $"injected fault: {operation} on VM {vm} failed");
            case SimFault.Die:
                lock (_host.Gate)
                    if (_host.Vms.TryGetValue(vm, out var v)) _host.StopLocked(v, $"injected fault: QEMU died during {operation}");
                throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm}: QEMU died during {operation} (injected fault)");
            case SimFault.OutOfSpace:
                throw new OperationFailedException(ErrorCodes.QmpError, $"injected fault: {operation} on VM {vm}: No space left on device");
            case SimFault.Stall s:
                await s.Handle.BlockAsync(ct);
                break;
        }
    }

    private async Task<VolumeInfo> DescribeLayerAsync(ImageId image, ChainLayer layer, CancellationToken ct) =>
        await _pool.Get(layer.Volume.Domain).DescribeVolumeAsync(image, layer.Volume.Volume, ct);

    private SimVm RequireRunningLocked(VmId vm)
    {
        ThrowIfDisposedLocked();
        if (!_known.Contains(vm))
            throw new OperationFailedException(ErrorCodes.VmNotFound, $"VM {vm} is not known to sim host {_host.Name}");
        if (!_host.Vms.TryGetValue(vm, out var v))
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm} is not running: its QEMU is gone");
        return v.Running
            ? v
            : throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm} ({v.Name}) is not running: its QEMU is gone");
    }

    private SimDrive RequireDriveLocked(VmId vm, ImageId drive) =>
        RequireRunningLocked(vm).Drives.FirstOrDefault(d => d.Image == drive)
        ?? throw new OperationFailedException(ErrorCodes.ImageNotFound, $"VM {vm} has no drive for image {drive}");

    /// <summary>A StartMirror repeated after a lost answer: the same job still running, or the pivot it already led to.</summary>
    private static BlockJobInfo? RepeatedMirrorLocked(SimDrive drive, MirrorRequest request)
    {
        if (drive.Job is { } job)
            return job.Destination.Path == request.DestinationLeaf.Path
                ? job.ToInfo(drive.Image)
                : throw new OperationFailedException(ErrorCodes.Conflict,
                    $"drive {drive.Image} of VM {request.Vm} already has mirror {job.JobId} into {job.Destination.Path}");
        return drive.LastJob is { Phase: BlockJobPhase.Completed } done && drive.Layers[^1].Path == request.DestinationLeaf.Path ? done : null;
    }

    private static bool OpensExactly(SimDrive drive, IEnumerable<ChainLayer> layers) =>
        drive.Layers.Select(l => l.Path).SequenceEqual(layers.Select(l => l.Path));

    private void ThrowIfDisposedLocked() => ObjectDisposedException.ThrowIf(_disposed, this);
}

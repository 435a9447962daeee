using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using LiveMigration.HostNode.Concurrency;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor.Libvirt;

/// <summary>
/// The hypervisor for hosts whose VMs libvirt manages (QEMU's monitor belongs to libvirtd; a second QMP client would
/// corrupt its view). Each VM is a transient domain named <c>lsm-VMID</c> with the VM id as its UUID; drives are named by
/// image id through libvirt user aliases; everything a drive runs on is read back from libvirt's domain XML.
/// <list type="bullet">
/// <item>pre-copy: <c>virDomainBlockCopy</c> SHALLOW | REUSE_EXT onto the destination leaf (whose header names the
///   destination copy: libvirt opens that backing chain at the pivot), <c>virDomainBlockJobAbort(PIVOT)</c>;</item>
/// <item>post-copy: an external disk-only snapshot (<c>virDomainSnapshotCreateXML</c>, no metadata) onto the new leaf,
///   then the backing switch libvirt's way, since libvirt has no call to re-point a running layer's backing:
///   a second shallow block copy of the active layer onto a fresh overlay of the copied chain, then a pivot.
///   That costs one extra copy of the active layer (only what the guest wrote since the snapshot);</item>
/// <item>events: libvirt's event loop (lifecycle and block-job-2 callbacks), never a timer; only the backing switch's
///   own copy is waited for by polling its job info, and only while it runs.</item>
/// </list>
/// VMs outlive this object and the host process; a new instance adopts them from libvirt's list of domains.
/// </summary>
public sealed class LibvirtHypervisor : IHypervisor, ILibvirtEventSink
{
    private static readonly TimeSpan JobPollInterval = TimeSpan.FromMilliseconds(50);

    private readonly LibvirtHypervisorOptions _options;
    private readonly ConnectHandle _connection;
    private readonly IntPtr _eventSinkId;
    private readonly int[] _callbackIds;
    private readonly KeyedLocks<VmId> _locks = new();
    private static readonly HypervisorInput Input = new(commaInPathsAllowed: true);
    private readonly ConcurrentDictionary<VmId, LibvirtVm> _vms = new();
    // Callbacks arrive on libvirt's loop thread; they are handled in order, one at a time, off that thread.
    private readonly Channel<Action> _eventQueue = Channel.CreateUnbounded<Action>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Task _eventPump;
    private volatile bool _disposed;

    /// <summary>Connects to libvirt (fails with libvirt's message when libvirtd does not answer) and subscribes to domain events.</summary>
    public LibvirtHypervisor(LibvirtHypervisorOptions options)
    {
        if (string.IsNullOrWhiteSpace(options.RunDirectory))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, "LibvirtHypervisorOptions.RunDirectory must be set");
        _options = options with { RunDirectory = Path.GetFullPath(options.RunDirectory) };
        var runDirectory = _options.RunDirectory;
        SocketDirectory = Hypervisor.SocketDirectory.For(runDirectory);
        try
        {
            _connection = LibvirtNative.Open(_options.Uri);
        }
        catch (DllNotFoundException e)
        {
            throw new OperationFailedException(ErrorCodes.IoError,
                $"libvirt.so.0 is not installed ({e.Message}): deploy/libvirt/setup.sh installs libvirt-clients and the daemon", e);
        }
        _eventSinkId = LibvirtEvents.Add(this);
        var callbackIds = new List<int>();
        try
        {
            callbackIds.Add(LibvirtNative.RegisterDomainEvent(_connection, LibvirtNative.EventIdLifecycle, LibvirtEvents.LifecyclePointer, _eventSinkId));
            callbackIds.Add(LibvirtNative.RegisterDomainEvent(_connection, LibvirtNative.EventIdBlockJob2, LibvirtEvents.BlockJobPointer, _eventSinkId));
        }
        catch
        {
            foreach (var id in callbackIds) LibvirtNative.DeregisterDomainEvent(_connection, id);
            LibvirtEvents.Remove(_eventSinkId);
            _connection.Dispose();
            throw;
        }
        _callbackIds = [.. callbackIds];
        _eventPump = Task.Run(PumpEventsAsync);
    }

    public string Kind => "libvirt";
    public string RunDirectory => _options.RunDirectory;
    /// <summary>Where the guest NBD sockets live (short, whatever the run directory's depth).</summary>
    public string SocketDirectory { get; }

    public event Action<HypervisorEvent>? EventRaised;

    private string Owner => _options.RunDirectory;

    // ---------------------------------------------------------------- VMs

    public async Task<VmInfo> StartVmAsync(VmSpec spec, CancellationToken ct = default)
    {
        ThrowIfDisposed();
        Input.ValidateSpec(spec);
        using var _ = await _locks.LockAsync(spec.Id, ct);
        if (_vms.TryGetValue(spec.Id, out var known) && known.DeathReason is null) return await DescribeCoreAsync(known, ct);
        // A dead instance of this VM: let go of its domain handle and socket before it starts again.
        if (known is not null) Forget(known);
        if (await TryAdoptAsync(spec.Id, ct) is { } adopted) return await DescribeCoreAsync(adopted, ct);
        SettleInterruptedSwitches(spec);

        var name = LibvirtDomainXml.DomainName(_options.NamePrefix, spec.Id);
        var guestSocket = "";
        if (_options.GuestNbdExport)
        {
            Hypervisor.SocketDirectory.Ensure(SocketDirectory);
            guestSocket = Path.Combine(SocketDirectory, spec.Id.Value.ToString("N")[..12] + ".nbd");
            File.Delete(guestSocket);
        }
        var xml = LibvirtDomainXml.ForNewDomain(spec, name, Owner, Math.Max(spec.MemoryMiB, _options.MinimumMemoryMiB),
            shareWritableForExport: _options.GuestNbdExport, guestSocket);
        var domain = await NativeAsync(() => LibvirtNative.CreateDomain(_connection, xml));
        try
        {
            var vm = await NewVmAsync(spec.Id, name, domain, ct);
            if (_options.GuestNbdExport) await ExportDrivesAsync(vm, guestSocket, ct);
            _vms[spec.Id] = vm;
            var info = await DescribeCoreAsync(vm, ct);
            Raise(new VmStarted(spec.Id));
            return info;
        }
        catch
        {
            // A half-built VM is worse than none: end it so a retry starts clean.
            try { await NativeAsync(() => LibvirtNative.Destroy(domain, $"virDomainDestroy({name})")); }
            catch (OperationFailedException) { /* it went away by itself */ }
            _vms.TryRemove(spec.Id, out LibvirtVm? _);
            domain.Dispose();
            if (guestSocket.Length > 0) File.Delete(guestSocket);
            throw;
        }
    }

    public async Task StopVmAsync(VmId vmId, CancellationToken ct = default)
    {
        ThrowIfDisposed();
        using var _ = await _locks.LockAsync(vmId, ct);
        var vm = _vms.TryGetValue(vmId, out var known) ? known : await TryAdoptAsync(vmId, ct);
        if (vm is null) return;
        vm.StopRequested = true;
        if (vm.DeathReason is null)
        {
            try { await NativeAsync(() => LibvirtNative.Destroy(vm.Domain, $"virDomainDestroy({vm.DomainName})")); }
            catch (OperationFailedException e) when (e.Code == ErrorCodes.VmNotRunning) { }
        }
        // The lifecycle event may not have been handled yet: say it here (once).
        OnGone(vm, "stopped on request");
        Forget(vm);
    }

    public async Task<IReadOnlyList<VmInfo>> AdoptRunningVmsAsync(CancellationToken ct = default)
    {
        ThrowIfDisposed();
        var domains = await NativeAsync(() => LibvirtNative.ListAllDomains(_connection, LibvirtNative.ListDomainsActive));
        var ids = new List<VmId>();
        foreach (var domain in domains)
        {
            using (domain)
            {
                var name = await NativeAsync(() => DomainName(domain));
                if (name is null || !name.StartsWith(_options.NamePrefix, StringComparison.Ordinal)
                    || !Guid.TryParseExact(name[_options.NamePrefix.Length..], "D", out var guid)) continue;
                ids.Add(new VmId(guid));
            }
        }
        var adopted = new List<VmInfo>();
        foreach (var id in ids)
        {
            using var _ = await _locks.LockAsync(id, ct);
            try
            {
                // Another host's domains (another run directory on the same libvirtd) are skipped, not adopted.
                var vm = _vms.TryGetValue(id, out var known) && known.DeathReason is null ? known : await TryAdoptAsync(id, ct, foreignIsConflict: false);
                if (vm is null) continue;
                adopted.Add(await DescribeCoreAsync(vm, ct));
            }
            catch (OperationFailedException e) when (e.Code == ErrorCodes.VmNotRunning)
            {
                // it ended just now
            }
            catch (OperationFailedException)
            {
                // This VM could not be adopted now: the others are adopted all the same (as the QMP adapter does). Unlike
                // QMP, libvirt does not list it unadopted yet (IHypervisor.ListUnadoptedAsync), so it waits for the host's restart.
            }
        }
        return adopted;
    }

    public async Task<IReadOnlyList<VmInfo>> ListVmsAsync(CancellationToken ct = default)
    {
        ThrowIfDisposed();
        var list = new List<VmInfo>();
        foreach (var vm in _vms.Values.OrderBy(v => v.VmName, StringComparer.Ordinal))
        {
            if (vm.DeathReason is null)
            {
                try { list.Add(await DescribeCoreAsync(vm, ct)); continue; }
                catch (OperationFailedException e) when (e.Code == ErrorCodes.VmNotRunning) { }
            }
            list.Add(new VmInfo(vm.Id, vm.VmName, vm.Pid, false,
                vm.Targets.Keys.Select(i => new DriveState(i, [], vm.GuestSocket, i.ToString(), null)).ToList()));
        }
        return list;
    }

    public Task<VmInfo> DescribeVmAsync(VmId vmId, CancellationToken ct = default) => DescribeCoreAsync(LiveVm(vmId), ct);

    // ---------------------------------------------------------------- pre-copy

    public async Task<BlockJobInfo> StartMirrorAsync(MirrorRequest request, CancellationToken ct = default)
    {
        Input.RequireAbsolute(request.DestinationLeaf, "destination leaf");
        if (request.SpeedBytesPerSecond < 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"mirror speed must be >= 0, got {request.SpeedBytesPerSecond}");
        using var _ = await _locks.LockAsync(request.Vm, ct);
        var vm = LiveVm(request.Vm);
        var disk = (await ViewAsync(vm, ct)).Disk(vm.Id, request.Drive);
        Input.RequireMirrorTarget(request.DestinationLeaf, disk.OpenChain.Count);
        var destination = request.DestinationLeaf.Path;
        if (disk.MirrorPath is { } running)
        {
            if (running == destination && await JobAsync(vm, request.Drive, ct) is { } job) return job;
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"VM {vm.Id} drive {request.Drive} is being copied to {running}, not {destination}");
        }
        if (disk.OpenChain[^1] == destination)
            return new BlockJobInfo(JobId(request.Drive), request.Drive, BlockJobPhase.Completed, 0, 0, 0);
        if (disk.OpenChain.Contains(destination))
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"destination leaf {request.DestinationLeaf.Volume} of drive {request.Drive} is part of the drive's current chain");

        var flags = LibvirtNative.BlockCopyShallow | LibvirtNative.BlockCopyReuseExternal
                    | (request.Mode == CopyMode.WriteBlocking ? LibvirtNative.BlockCopySynchronousWrites : 0);
        vm.JobEnds.TryRemove(disk.Target, out int _);
        await NativeAsync(() => LibvirtNative.BlockCopy(vm.Domain, disk.Target, LibvirtDomainXml.CopyDestination(destination, request.DestinationLeaf.Format),
            request.SpeedBytesPerSecond, flags, $"virDomainBlockCopy of VM {vm.Id} drive {request.Drive} ({disk.Target}) to {destination}"));
        vm.MirrorTargets[request.Drive] = destination;
        return await JobAsync(vm, request.Drive, ct)
               ?? throw new OperationFailedException(ErrorCodes.JobFailed,
                   $"block copy of VM {vm.Id} drive {request.Drive} vanished right after it started");
    }

    public async Task<BlockJobInfo?> GetBlockJobAsync(VmId vmId, ImageId drive, CancellationToken ct = default) =>
        await JobAsync(LiveVm(vmId), drive, ct);

    public async Task SetJobSpeedAsync(VmId vmId, ImageId drive, long bytesPerSecond, CancellationToken ct = default)
    {
        if (bytesPerSecond < 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"job speed must be >= 0, got {bytesPerSecond}");
        var vm = LiveVm(vmId);
        var target = vm.Target(drive);
        if (await JobAsync(vm, drive, ct) is null)
            throw new OperationFailedException(ErrorCodes.NoSuchJob, $"VM {vmId} drive {drive} has no block job to set the speed of");
        await NativeAsync(() => LibvirtNative.BlockJobSetSpeed(vm.Domain, target, bytesPerSecond,
            $"virDomainBlockJobSetSpeed of VM {vmId} drive {drive} to {bytesPerSecond} B/s"));
    }

    public async Task<DriveState> PivotAsync(VmId vmId, ImageId driveId, IReadOnlyList<ChainLayer> destinationBacking,
        CancellationToken ct = default)
    {
        foreach (var layer in destinationBacking) Input.RequireAbsolute(layer, "destination backing layer");
        using var _ = await _locks.LockAsync(vmId, ct);
        var vm = LiveVm(vmId);
        var disk = (await ViewAsync(vm, ct)).Disk(vm.Id, driveId);
        var wantedBacking = destinationBacking.Select(l => l.Path).ToList();
        if (disk.MirrorPath is not { } target)
        {
            // A repeated call after a pivot that finished: the drive already runs on the destination chain.
            if (await JobAsync(vm, driveId, ct) is null && disk.OpenChain.SkipLast(1).SequenceEqual(wantedBacking))
                return await DriveStateAsync(vm, driveId, ct);
            throw new OperationFailedException(ErrorCodes.NoSuchJob, $"VM {vmId} drive {driveId} has no mirror to pivot");
        }
        await RequireReadyAsync(vm, driveId, ct);
        await SwitchFlush.AheadOfSwitchAsync(target, ct);
        var watch = Stopwatch.StartNew();
        await PivotWhenReadyAsync(vm, disk, ct);
        vm.LastPivotDuration = watch.Elapsed;
        var state = await DriveStateAsync(vm, driveId, ct) with { SwitchDuration = watch.Elapsed };
        var expected = wantedBacking.Append(target).ToList();
        if (!state.OpenChain.SequenceEqual(expected))
            throw new OperationFailedException(ErrorCodes.JobFailed,
                $"VM {vmId} drive {driveId} pivoted onto [{string.Join(", ", state.OpenChain)}], not [{string.Join(", ", expected)}]: " +
                $"libvirt opens the backing the destination leaf's header names");
        return state;
    }

    public async Task<string?> MirrorTargetAsync(VmId vmId, ImageId driveId, CancellationToken ct = default)
    {
        var vm = LiveVm(vmId);
        return (await ViewAsync(vm, ct)).Disk(vm.Id, driveId).MirrorPath;
    }

    public async Task<DriveState> CancelMirrorAsync(VmId vmId, ImageId driveId, CancellationToken ct = default)
    {
        using var _ = await _locks.LockAsync(vmId, ct);
        var vm = LiveVm(vmId);
        var disk = (await ViewAsync(vm, ct)).Disk(vm.Id, driveId);
        if (disk.MirrorPath is null)
        {
            if (vm.MirrorTargets.TryGetValue(driveId, out var target) && disk.OpenChain[^1] == target)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"VM {vmId} drive {driveId} already pivoted onto {target}: the mirror cannot be cancelled any more");
            return await DriveStateAsync(vm, driveId, ct);
        }
        // Without PIVOT (and without ASYNC) libvirt ends the copy, keeps the source and returns once the job is gone.
        await NativeAsync(() => LibvirtNative.BlockJobAbort(vm.Domain, disk.Target, 0,
            $"virDomainBlockJobAbort of VM {vmId} drive {driveId}"));
        vm.MirrorTargets.TryRemove(driveId, out string? _);
        return await DriveStateAsync(vm, driveId, ct);
    }

    // ---------------------------------------------------------------- post-copy

    public async Task<DriveState> LiveSnapshotAsync(VmId vmId, ImageId driveId, ChainLayer newLeaf, CancellationToken ct = default)
    {
        Input.RequireAbsoluteCow(newLeaf, "new leaf");
        using var _ = await _locks.LockAsync(vmId, ct);
        var vm = LiveVm(vmId);
        var view = await ViewAsync(vm, ct);
        var disk = view.Disk(vm.Id, driveId);
        TimeSpan? switched = null;
        if (disk.OpenChain[^1] != newLeaf.Path)
        {
            if (disk.MirrorPath is not null || await JobAsync(vm, driveId, ct) is not null)
                throw new OperationFailedException(ErrorCodes.Conflict, $"VM {vmId} drive {driveId} has a mirror in flight: no snapshot now");
            if (disk.OpenChain.Contains(newLeaf.Path))
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"new leaf {newLeaf.Volume} of drive {driveId} is part of the drive's current chain");
            // External and disk-only onto the overlay the domain made (backed by the current leaf); no snapshot metadata
            // is kept by libvirt: the storage domain's metadata is the record.
            await SwitchFlush.AheadOfSwitchAsync(disk.OpenChain[^1], ct);
            var watch = Stopwatch.StartNew();
            await NativeAsync(() => LibvirtNative.SnapshotCreate(vm.Domain, LibvirtDomainXml.DiskSnapshot(view, disk.Target, newLeaf.Path),
                LibvirtNative.SnapshotDiskOnly | LibvirtNative.SnapshotReuseExternal | LibvirtNative.SnapshotNoMetadata | LibvirtNative.SnapshotAtomic,
                $"virDomainSnapshotCreateXML of VM {vmId} drive {driveId} onto {newLeaf.Path}"));
            switched = watch.Elapsed;
        }
        var state = await DriveStateAsync(vm, driveId, ct) with { SwitchDuration = switched };
        if (state.OpenChain[^1] != newLeaf.Path)
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"after the snapshot of VM {vmId} drive {driveId} the drive runs on {state.OpenChain[^1]}, not {newLeaf.Path}");
        return state;
    }

    /// <summary>
    /// libvirt's way, as libvirt cannot re-point a running layer's backing: the active layer (path P) is copied by a
    /// shallow block copy onto a fresh overlay of the new backing put at the same path P, then pivoted. QEMU keeps the
    /// old layer open by its descriptor, so the fresh file replaces P by an atomic rename; the old layer stays
    /// reachable under <c>P.lsm-switch</c> (a hard link) until the pivot is done, and is put back if anything fails,
    /// QEMU gone or not. <c>P.lsm-pivot</c> is written right before the pivot is asked for: a layer left behind without
    /// it never pivoted and is the truth (<see cref="SettleInterruptedSwitches"/> puts it back before a start); with
    /// it, QEMU died between asking and knowing, and both files are kept for an operator. Costs one extra copy of the
    /// active layer (what the guest wrote since the live snapshot); the copy shows as the drive's block job while it runs.
    /// </summary>
    public async Task<DriveState> SwitchBackingChainAsync(VmId vmId, ImageId driveId, IReadOnlyList<ChainLayer> newBacking,
        CancellationToken ct = default)
    {
        if (newBacking.Count == 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the new backing chain of drive {driveId} is empty");
        foreach (var layer in newBacking) Input.RequireAbsolute(layer, "new backing layer");
        using var _ = await _locks.LockAsync(vmId, ct);
        var vm = LiveVm(vmId);
        var disk = (await ViewAsync(vm, ct)).Disk(vm.Id, driveId);
        var leaf = disk.OpenChain[^1];
        var oldLayer = leaf + SwitchSuffix;
        var pivotMark = leaf + PivotSuffix;
        var newBackingPaths = newBacking.Select(l => l.Path).ToList();
        if (disk.OpenChain.SkipLast(1).SequenceEqual(newBackingPaths))
        {
            // a switch that pivoted but did not tidy up
            File.Delete(oldLayer);
            File.Delete(pivotMark);
            return await DriveStateAsync(vm, driveId, ct);
        }
        if (newBackingPaths.Contains(leaf))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the new backing chain of drive {driveId} contains its leaf {leaf}");
        if (disk.MirrorPath is not null && !File.Exists(oldLayer))
            throw new OperationFailedException(ErrorCodes.Conflict, $"VM {vmId} drive {driveId} has a mirror in flight: no backing switch now");

        vm.QuietTargets[disk.Target] = 1;
        TimeSpan switched;
        try
        {
            if (File.Exists(oldLayer))
            {
                // An earlier switch stopped before its pivot (QEMU runs on the old backing still): its copy ends, and
                // the layer QEMU runs on gets its name back.
                if (disk.MirrorPath is not null)
                    await NativeAsync(() => LibvirtNative.BlockJobAbort(vm.Domain, disk.Target, 0, $"virDomainBlockJobAbort of VM {vmId} drive {driveId}"));
                File.Move(oldLayer, leaf, overwrite: true);
                File.Delete(pivotMark);
            }
            var fresh = leaf + ".lsm-fresh";
            await CreateOverlayAsync(fresh, leaf, newBacking[^1], ct);
            LibvirtNative.HardLink(leaf, oldLayer);
            File.Move(fresh, leaf, overwrite: true);
            var watch = Stopwatch.StartNew();
            try
            {
                vm.JobEnds.TryRemove(disk.Target, out int _);
                await NativeAsync(() => LibvirtNative.BlockCopy(vm.Domain, disk.Target, LibvirtDomainXml.CopyDestination(leaf, VolumeFormat.Cow), 0,
                    LibvirtNative.BlockCopyShallow | LibvirtNative.BlockCopyReuseExternal,
                    $"virDomainBlockCopy (backing switch) of VM {vmId} drive {driveId} onto a fresh overlay of {newBacking[^1].Path}"));
                await WaitReadyAsync(vm, driveId, ct);
                await WriteDurablyAsync(pivotMark, $"pivot of {leaf} onto {newBacking[^1].Path} asked for at {DateTimeOffset.UtcNow:O}\n", ct);
                await SwitchFlush.AheadOfSwitchAsync(leaf, ct);
                var pivot = Stopwatch.StartNew();
                await PivotWhenReadyAsync(vm, disk, ct);
                // The guest waits only for the pivot: the shallow copy before it runs beside the guest's writes.
                switched = pivot.Elapsed;
                vm.LastPivotDuration = switched;
                vm.LastSwitchCopyDuration = watch.Elapsed;
            }
            catch
            {
                await UndoSwitchAsync(vm, disk, leaf, newBackingPaths);
                throw;
            }
            File.Delete(oldLayer);
            File.Delete(pivotMark);
        }
        finally
        {
            vm.QuietTargets.TryRemove(disk.Target, out byte _);
        }
        var state = await DriveStateAsync(vm, driveId, ct) with { SwitchDuration = switched };
        var expected = newBackingPaths.Append(leaf).ToList();
        if (!state.OpenChain.SequenceEqual(expected))
            throw new OperationFailedException(ErrorCodes.JobFailed,
                $"VM {vmId} drive {driveId} runs on [{string.Join(", ", state.OpenChain)}] after the backing switch, not [{string.Join(", ", expected)}]");
        return state;
    }

    private const string SwitchSuffix = ".lsm-switch";
    private const string PivotSuffix = ".lsm-pivot";

    /// <summary>
    /// A backing switch that failed: the layer QEMU ran on gets its name back unless QEMU runs on the new chain (it
    /// pivoted after all) — and also when QEMU is gone, as long as the pivot was never asked for (the fresh overlay at
    /// its name holds only part of the copy). QEMU gone after asking: both files stay, in doubt, for
    /// <see cref="SettleInterruptedSwitches"/> to refuse a start on either.
    /// </summary>
    private async Task UndoSwitchAsync(LibvirtVm vm, LibvirtDisk disk, string leaf, IReadOnlyList<string> newBackingPaths)
    {
        bool? pivoted = null; // null: QEMU is gone, nobody can ask it
        try
        {
            if (await JobAsync(vm, disk.Image, CancellationToken.None) is not null)
                await NativeAsync(() => LibvirtNative.BlockJobAbort(vm.Domain, disk.Target, 0, $"virDomainBlockJobAbort of VM {vm.Id} drive {disk.Image}"));
            pivoted = (await ViewAsync(vm, CancellationToken.None)).Disk(vm.Id, disk.Image).OpenChain.SkipLast(1).SequenceEqual(newBackingPaths);
        }
        catch (OperationFailedException) { /* the VM is gone */ }
        if (pivoted == true)
        {
            File.Delete(leaf + SwitchSuffix);
            File.Delete(leaf + PivotSuffix);
        }
        else if (pivoted == false || !File.Exists(leaf + PivotSuffix))
        {
            File.Move(leaf + SwitchSuffix, leaf, overwrite: true);
            File.Delete(leaf + PivotSuffix);
        }
    }

    /// <summary>
    /// Before a VM starts: a backing switch its host or QEMU died in left the layer QEMU ran on under
    /// <c>P.lsm-switch</c> and a partial copy at P. Without the pivot mark the old layer is the truth and gets its name
    /// back; with it the pivot may have happened, and the start is refused with both files named.
    /// </summary>
    private static void SettleInterruptedSwitches(VmSpec spec)
    {
        foreach (var layer in spec.Drives.SelectMany(d => d.Layers))
        {
            var path = layer.Path;
            var oldLayer = path + SwitchSuffix;
            if (!File.Exists(oldLayer))
            {
                File.Delete(path + PivotSuffix);
                continue;
            }
            if (File.Exists(path + PivotSuffix))
                throw new OperationFailedException(ErrorCodes.SwitchOutcomeUnknown,
                    $"QEMU died while the backing switch of {path} pivoted: nobody can tell whether {path} (the new overlay) or {oldLayer} " +
                    $"(the layer it ran on before) holds the last writes; both are kept, compare them, keep the newer at {path} and remove " +
                    $"{oldLayer} and {path + PivotSuffix} before starting the VM");
            File.Move(oldLayer, path, overwrite: true);
        }
    }

    /// <summary>The pivot mark, on disk (file and folder fsynced) before the pivot is asked for.</summary>
    private static async Task WriteDurablyAsync(string path, string text, CancellationToken ct)
    {
        await File.WriteAllTextAsync(path, text, ct);
        Storage.File.Posix.FsyncFile(path);
        Storage.File.Posix.FsyncDirectory(Path.GetDirectoryName(path)!);
    }

    /// <summary>How long the last pivot of the VM took (the guest's stall), for the report's figures.</summary>
    public TimeSpan? LastPivotDuration(VmId vmId) => _vms.TryGetValue(vmId, out var vm) ? vm.LastPivotDuration : null;

    /// <summary>How long the last backing switch's extra copy took, start to pivoted.</summary>
    public TimeSpan? LastSwitchCopyDuration(VmId vmId) => _vms.TryGetValue(vmId, out var vm) ? vm.LastSwitchCopyDuration : null;

    // ---------------------------------------------------------------- disposal

    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        _disposed = true;
        // Only our connection ends: the domains keep running for the next host instance to adopt.
        foreach (var id in _callbackIds) LibvirtNative.DeregisterDomainEvent(_connection, id);
        LibvirtEvents.Remove(_eventSinkId);
        _eventQueue.Writer.TryComplete();
        await _eventPump;
        foreach (var vm in _vms.Values) vm.Domain.Dispose();
        _vms.Clear();
        _connection.Dispose();
    }

    // ---------------------------------------------------------------- events

    void ILibvirtEventSink.OnLifecycle(string domainName, int eventType, int detail)
    {
        if (eventType is not (LibvirtNative.LifecycleStopped or LibvirtNative.LifecycleCrashed)) return;
        _eventQueue.Writer.TryWrite(() =>
        {
            if (VmByName(domainName) is { } vm) OnGone(vm, $"libvirt reports domain {domainName} {(eventType == LibvirtNative.LifecycleCrashed ? "crashed" : "stopped")} (detail {detail})");
        });
    }

    void ILibvirtEventSink.OnBlockJob(string domainName, string target, int status) =>
        _eventQueue.Writer.TryWrite(() =>
        {
            if (VmByName(domainName) is not { } vm) return;
            if (status != LibvirtNative.BlockJobReady) vm.JobEnds[target] = status;
            vm.Pulse();
            if (vm.QuietTargets.ContainsKey(target) || vm.ImageOf(target) is not { } drive) return;
            var jobId = JobId(drive);
            Raise(status switch
            {
                LibvirtNative.BlockJobReady => new BlockJobReady(vm.Id, drive, jobId),
                LibvirtNative.BlockJobCompleted => new BlockJobCompleted(vm.Id, drive, jobId),
                LibvirtNative.BlockJobCanceled => new BlockJobCancelled(vm.Id, drive, jobId),
                _ => new BlockJobFailed(vm.Id, drive, jobId, $"libvirt reports block job status {status} on disk {target}"),
            });
        });

    private async Task PumpEventsAsync()
    {
        await foreach (var handle in _eventQueue.Reader.ReadAllAsync())
        {
            try { handle(); }
            catch (Exception) { /* one faulty handler must not stop the events after it */ }
        }
    }

    private LibvirtVm? VmByName(string domainName) => _vms.Values.FirstOrDefault(v => v.DomainName == domainName);

    private void OnGone(LibvirtVm vm, string reason)
    {
        var stated = vm.StopRequested ? "stopped on request" : reason;
        if (Interlocked.CompareExchange(ref vm.DeathReason, stated, null) is not null) return;
        vm.Pulse();
        Raise(new VmStopped(vm.Id, stated));
    }

    private void Raise(HypervisorEvent hypervisorEvent)
    {
        foreach (var handler in EventRaised?.GetInvocationList() ?? [])
        {
            try { ((Action<HypervisorEvent>)handler)(hypervisorEvent); }
            catch (Exception) { /* one faulty subscriber must not keep the event from the others */ }
        }
    }

    // ---------------------------------------------------------------- internals

    private sealed class LibvirtVm(VmId id, string domainName, DomainHandle domain, string vmName, string guestSocket,
        IReadOnlyDictionary<ImageId, string> targets, int? pid)
    {
        public VmId Id { get; } = id;
        public string DomainName { get; } = domainName;
        public DomainHandle Domain { get; } = domain;
        public string VmName { get; } = vmName;
        public string GuestSocket { get; } = guestSocket;
        /// <summary>Image id → libvirt target (vda…), fixed for the domain's life.</summary>
        public IReadOnlyDictionary<ImageId, string> Targets { get; } = targets;
        public int? Pid { get; } = pid;
        public string? DeathReason; // set once, by CompareExchange
        public volatile bool StopRequested;
        public TimeSpan? LastPivotDuration { get; set; }
        public TimeSpan? LastSwitchCopyDuration { get; set; }
        /// <summary>The destination of each drive's last copy: tells a finished pivot from a never-started one.</summary>
        public ConcurrentDictionary<ImageId, string> MirrorTargets { get; } = new();
        /// <summary>Targets whose block job is the backing switch's own copy: its events are not the caller's.</summary>
        public ConcurrentDictionary<string, byte> QuietTargets { get; } = new();
        /// <summary>Each target's last terminal block-job status (completed, failed, cancelled).</summary>
        public ConcurrentDictionary<string, int> JobEnds { get; } = new();
        private TaskCompletionSource _signal = new(TaskCreationOptions.RunContinuationsAsynchronously);
        /// <summary>Completes at the next block-job event or death; waiters then re-check libvirt.</summary>
        public Task Signal => Volatile.Read(ref _signal).Task;
        public void Pulse() =>
            Interlocked.Exchange(ref _signal, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();

        public string Target(ImageId drive) =>
            Targets.TryGetValue(drive, out var target) ? target
                : throw new OperationFailedException(ErrorCodes.ImageNotFound, $"VM {Id} has no drive for image {drive}");

        public ImageId? ImageOf(string target) =>
            Targets.Where(t => t.Value == target).Select(t => (ImageId?)t.Key).FirstOrDefault();
    }

    private async Task<LibvirtVm> NewVmAsync(VmId id, string name, DomainHandle domain, CancellationToken ct)
    {
        var xml = await NativeAsync(() => LibvirtNative.GetXmlDesc(domain, $"virDomainGetXMLDesc({name})"));
        var view = LibvirtDomainXml.Parse(xml)
                   ?? throw new OperationFailedException(ErrorCodes.Conflict, $"domain {name} carries no LiveMigration metadata");
        ct.ThrowIfCancellationRequested();
        return new LibvirtVm(id, name, domain, view.VmName, view.GuestSocket,
            view.Disks.ToDictionary(d => d.Image, d => d.Target), ReadPid(name));
    }

    /// <summary>Takes over a domain an earlier instance of this host started (same owner) that still runs; null if none.</summary>
    private async Task<LibvirtVm?> TryAdoptAsync(VmId id, CancellationToken ct, bool foreignIsConflict = true)
    {
        var domain = await NativeAsync(() => LibvirtNative.LookupByUuid(_connection, id.Value));
        if (domain is null) return null;
        try
        {
            var name = LibvirtDomainXml.DomainName(_options.NamePrefix, id);
            var xml = await NativeAsync(() => LibvirtNative.GetXmlDesc(domain, $"virDomainGetXMLDesc({name})"));
            var view = LibvirtDomainXml.Parse(xml);
            if (view is null || view.Owner != Owner || await NativeAsync(() => DomainName(domain)) != name)
            {
                domain.Dispose();
                if (foreignIsConflict && (view is null || view.Owner != Owner))
                    throw new OperationFailedException(ErrorCodes.Conflict,
                        $"libvirt already runs a domain with UUID {id} that this host ({Owner}) did not start");
                return null;
            }
            var vm = await NewVmAsync(id, name, domain, ct);
            _vms[id] = vm;
            // READY may have been announced while no host listened: say it again so waiters need not poll.
            foreach (var drive in vm.Targets.Keys)
            {
                if (await JobAsync(vm, drive, ct) is { Phase: BlockJobPhase.Ready } job)
                {
                    vm.MirrorTargets[drive] = view.Disk(id, drive).MirrorPath ?? "";
                    Raise(new BlockJobReady(id, drive, job.JobId));
                }
                else if (view.Disk(id, drive).MirrorPath is { } running) vm.MirrorTargets[drive] = running;
            }
            return vm;
        }
        catch (OperationFailedException e) when (e.Code == ErrorCodes.VmNotRunning)
        {
            domain.Dispose();
            return null;
        }
    }

    private void Forget(LibvirtVm vm)
    {
        _vms.TryRemove(vm.Id, out _);
        vm.Domain.Dispose();
        if (vm.GuestSocket.Length > 0) File.Delete(vm.GuestSocket);
    }

    /// <summary>Starts QEMU's NBD server on the guest socket and exports each drive's active node (writable).</summary>
    private async Task ExportDrivesAsync(LibvirtVm vm, string socket, CancellationToken ct)
    {
        await MonitorAsync(vm, new JsonObject
        {
            ["execute"] = "nbd-server-start",
            ["arguments"] = new JsonObject { ["addr"] = new JsonObject { ["type"] = "unix", ["data"] = new JsonObject { ["path"] = socket } } },
        }, ct);
        var devices = (await MonitorAsync(vm, new JsonObject { ["execute"] = "query-block" }, ct)).AsArray();
        foreach (var (image, _) in vm.Targets)
        {
            var alias = "ua-" + image.Value.ToString("D");
            var node = devices.Select(d => d!).FirstOrDefault(d => (d["qdev"]?.GetValue<string>() ?? "").Contains($"/{alias}/", StringComparison.Ordinal))
                ?["inserted"]?["node-name"]?.GetValue<string>()
                ?? throw new OperationFailedException(ErrorCodes.QmpError, $"QEMU of VM {vm.Id} shows no block node for device {alias}");
            await MonitorAsync(vm, new JsonObject
            {
                ["execute"] = "block-export-add",
                ["arguments"] = new JsonObject
                {
                    ["type"] = "nbd", ["id"] = "export-" + image.Value.ToString("N"), ["name"] = image.ToString(),
                    ["node-name"] = node, ["writable"] = true,
                },
            }, ct);
        }
    }

    private async Task<JsonNode> MonitorAsync(LibvirtVm vm, JsonObject command, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        var what = $"QMP {command["execute"]} through libvirt on VM {vm.Id}";
        var answer = JsonNode.Parse(await NativeAsync(() => LibvirtNative.QemuMonitorCommand(vm.Domain, command.ToJsonString(), what)));
        if (answer?["error"] is { } error)
            throw new OperationFailedException(ErrorCodes.QmpError, $"{what} failed: {error["desc"]}");
        return answer?["return"] ?? new JsonObject();
    }

    private async Task<LibvirtDomainView> ViewAsync(LibvirtVm vm, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        var xml = await LiveCallAsync(vm, () => LibvirtNative.GetXmlDesc(vm.Domain, $"virDomainGetXMLDesc({vm.DomainName})"));
        return LibvirtDomainXml.Parse(xml)
               ?? throw new OperationFailedException(ErrorCodes.Conflict, $"domain {vm.DomainName} lost its LiveMigration metadata");
    }

    private async Task<BlockJobInfo?> JobAsync(LibvirtVm vm, ImageId drive, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        var target = vm.Target(drive);
        var info = await LiveCallAsync(vm, () => LibvirtNative.GetBlockJobInfo(vm.Domain, target,
            $"virDomainGetBlockJobInfo of VM {vm.Id} drive {drive} ({target})"));
        if (info is not { } job) return null;
        var cur = (long)job.Cur;
        var end = (long)job.End;
        // libvirt keeps cur below end until QEMU says READY. Once READY a copy stays READY (pivotable) even while the
        // guest's new writes put cur below end again: that state is read from the domain XML's <mirror ready='yes'>.
        var ready = end > 0 && cur == end
                    || (await ViewAsync(vm, ct)).Disks.FirstOrDefault(d => d.Image == drive) is { MirrorReady: true };
        var phase = ready ? BlockJobPhase.Ready : BlockJobPhase.Running;
        return new BlockJobInfo(JobId(drive), drive, phase, cur, end, (long)job.Bandwidth);
    }

    private static string JobId(ImageId drive) => "copy-" + drive.Value.ToString("N");

    private async Task RequireReadyAsync(LibvirtVm vm, ImageId drive, CancellationToken ct)
    {
        var job = await JobAsync(vm, drive, ct)
                  ?? throw new OperationFailedException(ErrorCodes.NoSuchJob, $"VM {vm.Id} drive {drive} has no block copy to pivot");
        if (job.Phase != BlockJobPhase.Ready)
            throw new OperationFailedException(ErrorCodes.NoSuchJob,
                $"block copy {job.JobId} of VM {vm.Id} is {job.Phase}, not READY: {job.Offset} of {job.Length} bytes copied");
    }

    /// <summary>Waits (events first, the job's info between them) until the drive's copy is READY.</summary>
    private async Task WaitReadyAsync(LibvirtVm vm, ImageId drive, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + _options.CommandTimeout;
        while (true)
        {
            var signal = vm.Signal;
            var job = await JobAsync(vm, drive, ct)
                      ?? throw new OperationFailedException(ErrorCodes.JobFailed,
                          $"the backing switch's copy of VM {vm.Id} drive {drive} ended before it was ready (status {vm.JobEnds.GetValueOrDefault(vm.Target(drive), -1)})");
            if (job.Phase == BlockJobPhase.Ready) return;
            if (DateTime.UtcNow > deadline)
                throw new OperationFailedException(ErrorCodes.Timeout,
                    $"the backing switch's copy of VM {vm.Id} drive {drive} was not ready within {_options.CommandTimeout.TotalSeconds:0} s ({job.Offset} of {job.Length} bytes)");
            await Task.WhenAny(signal, Task.Delay(JobPollInterval, ct));
            ct.ThrowIfCancellationRequested();
        }
    }

    /// <summary>
    /// <c>virDomainBlockJobAbort(PIVOT)</c>, synchronous (libvirt returns when the job is gone). libvirt refuses a pivot
    /// while its own view of the copy is not READY yet (its event may trail QEMU's counters): retried until the deadline.
    /// </summary>
    private async Task PivotWhenReadyAsync(LibvirtVm vm, LibvirtDisk disk, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + _options.CommandTimeout;
        while (true)
        {
            try
            {
                await LiveCallAsync(vm, () => LibvirtNative.BlockJobAbort(vm.Domain, disk.Target, LibvirtNative.BlockJobAbortPivot,
                    $"virDomainBlockJobAbort(PIVOT) of VM {vm.Id} drive {disk.Image}"));
                return;
            }
            catch (OperationFailedException e) when (e.Code == ErrorCodes.JobFailed && e.Message.Contains("not ready", StringComparison.OrdinalIgnoreCase)
                                                     && DateTime.UtcNow < deadline)
            {
                await Task.Delay(JobPollInterval, ct);
            }
        }
    }

    private async Task<DriveState> DriveStateAsync(LibvirtVm vm, ImageId drive, CancellationToken ct) =>
        (await DescribeCoreAsync(vm, ct)).Drive(drive);

    private async Task<VmInfo> DescribeCoreAsync(LibvirtVm vm, CancellationToken ct)
    {
        var view = await ViewAsync(vm, ct);
        var drives = new List<DriveState>();
        foreach (var disk in view.Disks)
            drives.Add(new DriveState(disk.Image, disk.OpenChain, vm.GuestSocket, disk.Image.ToString(), await JobAsync(vm, disk.Image, ct)));
        return new VmInfo(vm.Id, vm.VmName, vm.Pid, vm.DeathReason is null, drives);
    }

    /// <summary>A libvirt call on a VM: a domain gone mid-call marks the VM dead (VM_NOT_RUNNING from then on).</summary>
    private async Task<T> LiveCallAsync<T>(LibvirtVm vm, Func<T> call)
    {
        try
        {
            return await NativeAsync(call);
        }
        catch (OperationFailedException e) when (e.Code == ErrorCodes.VmNotRunning)
        {
            OnGone(vm, $"libvirt no longer runs domain {vm.DomainName}: {e.Message}");
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm.Id} (domain {vm.DomainName}) is gone: {vm.DeathReason}", e);
        }
    }

    private async Task LiveCallAsync(LibvirtVm vm, Action call) => await LiveCallAsync(vm, () => { call(); return 0; });

    /// <summary>libvirt calls block on an RPC to libvirtd: they run on the thread pool, never on the caller's (actor) thread.</summary>
    private static Task<T> NativeAsync<T>(Func<T> call) => Task.Run(call);

    private static Task NativeAsync(Action call) => Task.Run(call);

    private static string? DomainName(DomainHandle domain) => LibvirtNative.BorrowedDomainName(domain.DangerousGetHandle());

    /// <summary>QEMU's pid as libvirtd wrote it (readable on the libvirt host itself; null for a remote URI).</summary>
    private static int? ReadPid(string domainName)
    {
        try
        {
            return int.TryParse(File.ReadAllText($"/run/libvirt/qemu/{domainName}.pid").Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
                ? pid : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>A fresh qcow2 overlay of <paramref name="backing"/>, as large as <paramref name="likeLayer"/> and with its cluster size.</summary>
    private static async Task CreateOverlayAsync(string path, string likeLayer, ChainLayer backing, CancellationToken ct)
    {
        var info = JsonNode.Parse(await ProcessRunner.RunCheckedAsync("qemu-img",
            ["info", "-U", "--output=json", "-f", "qcow2", likeLayer], ErrorCodes.QemuImgFailed, ct));
        var size = info?["virtual-size"]?.GetValue<long>()
                   ?? throw new OperationFailedException(ErrorCodes.QemuImgFailed, $"qemu-img info of {likeLayer} reports no virtual-size");
        var clusterSize = info["cluster-size"]?.GetValue<long>() ?? 65536;
        // Same folder: the relative name VDSM writes; another folder (domain): the absolute path.
        var backingName = Path.GetDirectoryName(backing.Path) == Path.GetDirectoryName(path) ? Path.GetFileName(backing.Path) : backing.Path;
        File.Delete(path);
        await ProcessRunner.RunCheckedAsync("qemu-img",
        [
            "create", "-q", "-f", "qcow2", "-b", backingName, "-F", backing.Format == VolumeFormat.Cow ? "qcow2" : "raw",
            "-o", $"cluster_size={clusterSize.ToString(CultureInfo.InvariantCulture)}", path, size.ToString(CultureInfo.InvariantCulture),
        ], ErrorCodes.QemuImgFailed, ct);
        Storage.File.StorageModes.Restrict(path);
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    private LibvirtVm LiveVm(VmId id)
    {
        ThrowIfDisposed();
        if (!_vms.TryGetValue(id, out var vm))
            throw new OperationFailedException(ErrorCodes.VmNotFound, $"VM {id} is not running on this host (not started or adopted here)");
        if (vm.DeathReason is { } reason)
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {id} (domain {vm.DomainName}, QEMU pid {vm.Pid}) is gone: {reason}");
        return vm;
    }
}

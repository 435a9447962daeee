using System.Collections.Concurrent;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using LiveMigration.HostNode.Concurrency;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor.Qmp;

/// <summary>
/// The real hypervisor: each VM is a daemonized <c>qemu-system-x86_64 -M none</c> driven over QMP, its drives
/// <c>blockdev-add</c>ed chains exported over NBD. What a drive runs on is always read back from QEMU.
/// VMs outlive this object (and the host process); a new instance adopts them from the manifests.
/// </summary>
public sealed class QmpHypervisor : IHypervisor
{
    private static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(3);
    private static readonly TimeSpan AdoptConnectTimeout = TimeSpan.FromSeconds(5);

    private readonly QmpHypervisorOptions _options;
    private readonly KeyedLocks<VmId> _locks = new();
    private static readonly HypervisorInput Input = new(commaInPathsAllowed: false);
    private readonly ConcurrentDictionary<VmId, QemuVm> _vms = new();
    private long _fullNodeDescriptions;
    private volatile bool _disposed;

    public QmpHypervisor(QmpHypervisorOptions options)
    {
        if (string.IsNullOrWhiteSpace(options.RunDirectory))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, "QmpHypervisorOptions.RunDirectory must be set");
        _options = options with { RunDirectory = Path.GetFullPath(options.RunDirectory) };
        var runDirectory = _options.RunDirectory;
        SocketDirectory = Hypervisor.SocketDirectory.For(runDirectory, _options.QemuAccount);
    }

    public string Kind => "qmp";
    public string RunDirectory => _options.RunDirectory;
    /// <summary>Where the QMP and NBD sockets live (short, whatever the run directory's depth).</summary>
    public string SocketDirectory { get; }

    public event Action<HypervisorEvent>? EventRaised;

    private string VmsDirectory => Path.Combine(RunDirectory, "vms");
    private string LogsDirectory => Path.Combine(RunDirectory, "logs");
    private string ManifestPath(VmId id) => Path.Combine(VmsDirectory, $"{id}.json");

    // ---------------------------------------------------------------- VMs

    public async Task<VmInfo> StartVmAsync(VmSpec spec, CancellationToken ct = default)
    {
        ThrowIfDisposed();
        Input.ValidateSpec(spec);
        using var _ = await _locks.LockAsync(spec.Id, ct);
        if (_vms.TryGetValue(spec.Id, out var known))
        {
            if (known.DeathReason is null) return await DescribeCoreAsync(known, ct);
            await ForgetAsync(known);
        }
        else if (await TryAdoptAsync(spec.Id, ct) is { } adopted)
        {
            return await DescribeCoreAsync(adopted, ct);
        }

        Directory.CreateDirectory(VmsDirectory);
        Directory.CreateDirectory(LogsDirectory);
        Hypervisor.SocketDirectory.Ensure(SocketDirectory, _options.QemuAccount);
        if (_options.QemuAccount is { } account
            && await account.FirstUnreachableAsync(spec.Drives.SelectMany(d => d.Layers).Select(l => l.Path).ToList(), ct) is { } unreachable)
            throw new OperationFailedException(ErrorCodes.PermissionDenied, $"VM {spec.Id} cannot start: QEMU could not open {unreachable}");
        var shortId = spec.Id.Value.ToString("N")[..12];
        var qmpSocket = Path.Combine(SocketDirectory, shortId + ".qmp");
        var nbdSocket = Path.Combine(SocketDirectory, shortId + ".nbd");
        File.Delete(qmpSocket);
        File.Delete(nbdSocket);
        var logFile = Path.Combine(LogsDirectory, $"{spec.Id}.log");
        var arguments = new List<string>
        {
            "-M", "none", "-nodefaults", "-display", "none",
            "-m", spec.MemoryMiB.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "-name", "guest=" + EscapeOption(spec.Name),
            "-qmp", $"unix:{EscapeOption(qmpSocket)},server=on,wait=off",
        };
        // QEMU as its own account writes its pid file where that account may write (its socket folder); the host copies
        // it to RUN/vms/VMID.pid, where `lsm local down` and a restarted host look for the VMs they must stop.
        var pidFile = Path.Combine(VmsDirectory, $"{spec.Id}.pid");
        var qemuPidFile = _options.QemuAccount is null ? pidFile : Path.Combine(SocketDirectory, shortId + ".pid");
        var pid = await QemuProcess.StartDaemonAsync(_options.QemuBinary, arguments, qemuPidFile, logFile, _options.QemuAccount, ct);
        if (qemuPidFile != pidFile)
        {
            await File.WriteAllTextAsync(pidFile, pid.ToString(System.Globalization.CultureInfo.InvariantCulture), ct);
            File.Delete(qemuPidFile);
        }

        var manifest = new VmManifest(spec.Id.ToString(), spec.Name, pid, qmpSocket, nbdSocket, logFile,
            spec.Drives.Select(d => new DriveManifest(d.Image.ToString(), d.Image.ToString(),
                d.Layers.Select(LayerManifest.From).ToList(), null)).ToList());
        QmpClient? client = null;
        try
        {
            // Written before any QMP work so a host that dies right here still finds (and can stop) this QEMU.
            await manifest.SaveAsync(ManifestPath(spec.Id), ct);
            client = await QmpClient.ConnectAsync(qmpSocket, _options.CommandTimeout, ct);
            var vm = new QemuVm(spec.Id, client, manifest);
            foreach (var drive in spec.Drives)
                await AddChainAsync(vm, drive.Layers, topWritable: true, ct);
            await ExecuteAsync(vm, "nbd-server-start", new Dictionary<string, object?>
            {
                ["addr"] = new Dictionary<string, object?>
                {
                    ["type"] = "unix",
                    ["data"] = new Dictionary<string, object?> { ["path"] = nbdSocket },
                },
            }, ct);
            foreach (var drive in spec.Drives)
            {
                await ExecuteAsync(vm, "block-export-add", new Dictionary<string, object?>
                {
                    ["type"] = "nbd",
                    ["id"] = BlockNodes.ExportId(drive.Image),
                    ["name"] = drive.Image.ToString(),
                    ["node-name"] = BlockNodes.FormatNode(drive.Leaf),
                    ["writable"] = true,
                }, ct);
            }
            Attach(vm);
            _vms[spec.Id] = vm;
            var info = await DescribeCoreAsync(vm, ct);
            Raise(new VmStarted(spec.Id));
            return info;
        }
        catch
        {
            // A half-built VM is worse than none: end it so a retry starts clean.
            if (client is not null) await client.DisposeAsync();
            await QemuProcess.EnsureGoneAsync(pid, qmpSocket, TimeSpan.Zero, CancellationToken.None);
            File.Delete(ManifestPath(spec.Id));
            throw;
        }
    }

    public async Task StopVmAsync(VmId vmId, CancellationToken ct = default)
    {
        ThrowIfDisposed();
        using var _ = await _locks.LockAsync(vmId, ct);
        if (_vms.TryGetValue(vmId, out var vm))
        {
            vm.StopRequested = true;
            if (vm.DeathReason is null)
            {
                try { await vm.Qmp.ExecuteAsync("quit", null, _options.CommandTimeout, ct); }
                catch (OperationFailedException e) when (e.Code is ErrorCodes.VmNotRunning or ErrorCodes.Timeout) { }
            }
            await QemuProcess.EnsureGoneAsync(vm.Manifest.Pid, vm.Manifest.QmpSocket, StopGrace, ct);
            // The monitor's EOF may not have been read yet, and disposing the client drops it: say it here (once).
            OnDisconnected(vm, "stopped on request");
            await ForgetAsync(vm);
            return;
        }
        // Started by an earlier host instance and not adopted: still ours to stop.
        if (await VmManifest.LoadAsync(ManifestPath(vmId), ct) is { } manifest)
        {
            await QemuProcess.EnsureGoneAsync(manifest.Pid, manifest.QmpSocket, TimeSpan.Zero, ct);
            DeleteFiles(vmId, manifest);
        }
    }

    public async Task<IReadOnlyList<VmInfo>> AdoptRunningVmsAsync(CancellationToken ct = default)
    {
        ThrowIfDisposed();
        var adopted = new List<VmInfo>();
        if (!Directory.Exists(VmsDirectory)) return adopted;
        foreach (var path in Directory.EnumerateFiles(VmsDirectory, "*.json"))
        {
            if (!UuidText.TryParse(Path.GetFileNameWithoutExtension(path), out var guid)) continue;
            var id = new VmId(guid);
            using var _ = await _locks.LockAsync(id, ct);
            try
            {
                var vm = _vms.TryGetValue(id, out var known) && known.DeathReason is null ? known : await TryAdoptAsync(id, ct);
                if (vm is not null) adopted.Add(await DescribeCoreAsync(vm, ct));
            }
            catch (OperationFailedException)
            {
                // This VM's monitor failed us: the others are adopted all the same (it is reported by RunsUnadoptedAsync).
            }
        }
        return adopted;
    }

    public async Task<bool> RunsUnadoptedAsync(VmId id, CancellationToken ct = default)
    {
        ThrowIfDisposed();
        if (_vms.TryGetValue(id, out var known) && known.DeathReason is null) return false; // adopted: listed
        return await VmManifest.LoadAsync(ManifestPath(id), ct) is { } manifest && QemuProcess.IsAlive(manifest.Pid, manifest.QmpSocket);
    }

    public async Task<IReadOnlyList<VmId>> ListUnadoptedAsync(CancellationToken ct = default)
    {
        ThrowIfDisposed();
        var unadopted = new List<VmId>();
        if (!Directory.Exists(VmsDirectory)) return unadopted;
        foreach (var path in Directory.EnumerateFiles(VmsDirectory, "*.json"))
            if (UuidText.TryParse(Path.GetFileNameWithoutExtension(path), out var guid) && await RunsUnadoptedAsync(new VmId(guid), ct))
                unadopted.Add(new VmId(guid));
        return unadopted;
    }

    public async Task<IReadOnlyList<VmInfo>> ListVmsAsync(CancellationToken ct = default)
    {
        ThrowIfDisposed();
        var list = new List<VmInfo>();
        foreach (var vm in _vms.Values.OrderBy(v => v.Manifest.Name, StringComparer.Ordinal))
        {
            if (vm.DeathReason is null)
            {
                try { list.Add(await DescribeCoreAsync(vm, ct)); continue; }
                catch (OperationFailedException e) when (e.Code == ErrorCodes.VmNotRunning) { }
            }
            list.Add(new VmInfo(vm.Id, vm.Manifest.Name, vm.Manifest.Pid, false,
                vm.Manifest.Drives.Select(d => new DriveState(d.ImageId, [], vm.Manifest.NbdSocket, d.ExportName, null)).ToList()));
        }
        return list;
    }

    public async Task<VmInfo> DescribeVmAsync(VmId vmId, CancellationToken ct = default)
    {
        var vm = LiveVm(vmId);
        return await DescribeCoreAsync(vm, ct);
    }

    // ---------------------------------------------------------------- pre-copy

    public async Task<BlockJobInfo> StartMirrorAsync(MirrorRequest request, CancellationToken ct = default)
    {
        Input.RequireAbsolute(request.DestinationLeaf, "destination leaf");
        if (request.SpeedBytesPerSecond < 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"mirror speed must be >= 0, got {request.SpeedBytesPerSecond}");
        using var _ = await _locks.LockAsync(request.Vm, ct);
        var vm = LiveVm(request.Vm);
        var drive = vm.Manifest.Drive(request.Drive);
        Input.RequireMirrorTarget(request.DestinationLeaf, drive.Layers.Count);
        var jobId = BlockNodes.MirrorJobId(request.Drive);
        var targetNode = BlockNodes.FormatNode(request.DestinationLeaf);
        if (await FindJobAsync(vm, request.Drive, ct) is { } running)
        {
            // A repeat of the same mirror attaches to it; a mirror into another leaf is someone else's copy.
            if (drive.MirrorTarget is { } current && BlockNodes.FormatNode(current.ToLayer()) == targetNode) return running;
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"VM {vm.Id} drive {request.Drive} already has block job {running.JobId} into {drive.MirrorTarget?.Path ?? "another target"}, not {request.DestinationLeaf.Path}");
        }
        var activeNode = await ActiveNodeAsync(vm, drive, ct);
        if (activeNode == targetNode)
            return new BlockJobInfo(jobId, request.Drive, BlockJobPhase.Completed, 0, 0, 0);
        if (drive.Layers.Any(l => BlockNodes.FormatNode(l.ToLayer()) == targetNode))
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"destination leaf {request.DestinationLeaf.Volume} of drive {request.Drive} is part of the drive's current chain");

        // A target left over from an earlier, ended mirror to another leaf is closed first.
        if (drive.MirrorTarget is { } previous && BlockNodes.FormatNode(previous.ToLayer()) != targetNode)
            await DeleteNodesAsync(vm, [previous.ToLayer()], ct);
        await AddChainAsync(vm, [request.DestinationLeaf], topWritable: true, ct);
        await SaveAsync(vm, vm.Manifest.WithDrive(drive with { MirrorTarget = LayerManifest.From(request.DestinationLeaf), MirrorMode = request.Mode }), ct);

        vm.JobEnds.TryRemove(jobId, out QmpEvent? _);
        vm.CancelRequested.TryRemove(jobId, out byte _);
        await ExecuteAsync(vm, "blockdev-mirror", new Dictionary<string, object?>
        {
            ["job-id"] = jobId,
            ["device"] = activeNode,
            ["target"] = targetNode,
            ["sync"] = "top",
            ["speed"] = request.SpeedBytesPerSecond,
            ["copy-mode"] = request.Mode == CopyMode.WriteBlocking ? "write-blocking" : "background",
        }, ct);
        return await FindJobAsync(vm, request.Drive, ct)
            // Tiny layers can finish... but a mirror never ends on its own: it waits READY for complete/cancel.
            ?? throw new OperationFailedException(ErrorCodes.JobFailed, $"mirror job {jobId} of VM {vm.Id} vanished right after it started");
    }

    public async Task<BlockJobInfo?> GetBlockJobAsync(VmId vmId, ImageId drive, CancellationToken ct = default)
    {
        var vm = LiveVm(vmId);
        vm.Manifest.Drive(drive);
        return await FindJobAsync(vm, drive, ct);
    }

    public async Task SetJobSpeedAsync(VmId vmId, ImageId drive, long bytesPerSecond, CancellationToken ct = default)
    {
        if (bytesPerSecond < 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"job speed must be >= 0, got {bytesPerSecond}");
        var vm = LiveVm(vmId);
        vm.Manifest.Drive(drive);
        var job = await FindJobAsync(vm, drive, ct)
            ?? throw new OperationFailedException(ErrorCodes.NoSuchJob, $"VM {vmId} drive {drive} has no block job to set the speed of");
        await ExecuteAsync(vm, "block-job-set-speed",
            new Dictionary<string, object?> { ["device"] = job.JobId, ["speed"] = bytesPerSecond }, ct);
    }

    public Task<string?> MirrorTargetAsync(VmId vmId, ImageId driveId, CancellationToken ct = default)
    {
        var drive = LiveVm(vmId).Manifest.Drive(driveId);
        return Task.FromResult(drive.MirrorTarget?.Path);
    }

    public async Task<DriveState> PivotAsync(VmId vmId, ImageId driveId, IReadOnlyList<ChainLayer> destinationBacking,
        CancellationToken ct = default)
    {
        foreach (var layer in destinationBacking) Input.RequireAbsolute(layer, "destination backing layer");
        using var _ = await _locks.LockAsync(vmId, ct);
        var vm = LiveVm(vmId);
        var drive = vm.Manifest.Drive(driveId);
        var jobId = BlockNodes.MirrorJobId(driveId);
        if (drive.MirrorTarget is null)
        {
            // A repeated call after a pivot that finished: the drive already runs on the destination chain.
            var backing = drive.Chain.SkipLast(1).ToList();
            if (await FindJobAsync(vm, driveId, ct) is null && backing.SequenceEqual(destinationBacking))
                return await DriveStateAsync(vm, driveId, ct);
            throw new OperationFailedException(ErrorCodes.NoSuchJob, $"VM {vmId} drive {driveId} has no mirror to pivot");
        }
        var target = drive.MirrorTarget.ToLayer();
        var targetNode = BlockNodes.FormatNode(target);
        var source = drive.Chain;
        TimeSpan? switched = null;

        if (await ActiveNodeAsync(vm, drive, ct) != targetNode)
        {
            await RequireReadyAsync(vm, driveId, jobId, ct);
            // Attach the (complete) destination copy under the leaf the mirror wrote, unless a retry did already.
            if (destinationBacking.Count > 0 && !await HasBackingAsync(vm, targetNode, ct))
            {
                var top = await AddChainAsync(vm, destinationBacking, topWritable: false, ct);
                await ExecuteAsync(vm, "blockdev-snapshot",
                    new Dictionary<string, object?> { ["node"] = top, ["overlay"] = targetNode }, ct);
            }
            await SwitchFlush.AheadOfSwitchAsync(target.Path, ct);
            vm.JobEnds.TryRemove(jobId, out QmpEvent? _);
            var watch = Stopwatch.StartNew();
            await ExecuteAsync(vm, "block-job-complete", new Dictionary<string, object?> { ["device"] = jobId }, ct);
            var ended = await WaitForJobEndAsync(vm, jobId, ct);
            switched = vm.LastPivotDuration = watch.Elapsed;
            if (ended is not null && ended.Data.TryGetProperty("error", out var error))
                throw new OperationFailedException(ErrorCodes.JobFailed, $"mirror {jobId} of VM {vmId} failed while pivoting: {error.GetString()}");
            var activeNow = await ActiveNodeAsync(vm, drive, ct);
            if (activeNow != targetNode)
                throw new OperationFailedException(ErrorCodes.JobFailed,
                    $"mirror {jobId} of VM {vmId} ended but drive {driveId} still runs on node {activeNow}, not {targetNode}");
        }
        // The source files are closed only now, once nothing reads them any more. Closing its leaf flushes what the guest
        // wrote there before the pivot, every guest of the VM waiting (31 ms traced here): written out first from outside.
        await SwitchFlush.AheadOfSwitchAsync(source[^1].Path, ct);
        await DeleteNodesAsync(vm, source.AsEnumerable().Reverse().ToList(), ct);
        await SaveAsync(vm, vm.Manifest.WithDrive(drive with
        {
            Layers = destinationBacking.Append(target).Select(LayerManifest.From).ToList(),
            MirrorTarget = null,
            MirrorMode = null,
        }), ct);
        return await DriveStateAsync(vm, driveId, ct) with { SwitchDuration = switched };
    }

    public async Task<DriveState> CancelMirrorAsync(VmId vmId, ImageId driveId, CancellationToken ct = default)
    {
        using var _ = await _locks.LockAsync(vmId, ct);
        var vm = LiveVm(vmId);
        var drive = vm.Manifest.Drive(driveId);
        var jobId = BlockNodes.MirrorJobId(driveId);
        if (drive.MirrorTarget is { } targetManifest)
        {
            var target = targetManifest.ToLayer();
            if (await ActiveNodeAsync(vm, drive, ct) == BlockNodes.FormatNode(target))
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"VM {vmId} drive {driveId} already pivoted onto {target.Path}: the mirror cannot be cancelled any more");
            if (await FindJobAsync(vm, driveId, ct) is not null)
            {
                vm.JobEnds.TryRemove(jobId, out QmpEvent? _);
                vm.CancelRequested[jobId] = 1;
                // On a READY mirror this ends the job without a pivot (QEMU reports COMPLETED); before READY, CANCELLED.
                try
                {
                    await ExecuteAsync(vm, "block-job-cancel", new Dictionary<string, object?> { ["device"] = jobId }, ct);
                    await WaitForJobEndAsync(vm, jobId, ct);
                }
                catch (OperationFailedException e) when (e.InnerException is QmpCommandException { ErrorClass: "DeviceNotActive" })
                {
                    // The job ended on its own between the look and the cancel (a mirror whose target ran out of space
                    // fails and is gone): nothing to cancel. It ended without a pivot, which only a complete makes, and
                    // the drive was seen still on its source above. A job still there is another matter.
                    if (await FindJobAsync(vm, driveId, ct) is not null) throw;
                }
            }
            await DeleteNodesAsync(vm, [target], ct);
            await SaveAsync(vm, vm.Manifest.WithDrive(drive with { MirrorTarget = null, MirrorMode = null }), ct);
        }
        return await DriveStateAsync(vm, driveId, ct);
    }

    // ---------------------------------------------------------------- post-copy

    public async Task<DriveState> LiveSnapshotAsync(VmId vmId, ImageId driveId, ChainLayer newLeaf, CancellationToken ct = default)
    {
        Input.RequireAbsoluteCow(newLeaf, "new leaf");
        using var _ = await _locks.LockAsync(vmId, ct);
        var vm = LiveVm(vmId);
        var drive = vm.Manifest.Drive(driveId);
        var newNode = BlockNodes.FormatNode(newLeaf);
        var activeNode = await ActiveNodeAsync(vm, drive, ct);
        TimeSpan? switched = null;
        if (activeNode != newNode)
        {
            if (drive.MirrorTarget is not null || await FindJobAsync(vm, driveId, ct) is not null)
                throw new OperationFailedException(ErrorCodes.Conflict, $"VM {vmId} drive {driveId} has a mirror in flight: no snapshot now");
            if (drive.Layers.Any(l => BlockNodes.FormatNode(l.ToLayer()) == newNode))
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"new leaf {newLeaf.Volume} of drive {driveId} is part of the drive's current chain");
            await AddChainAsync(vm, [newLeaf], topWritable: true, ct);
            await SwitchFlush.AheadOfSwitchAsync(drive.Chain[^1].Path, ct);
            // The switch itself: QEMU drains the drive while it puts the overlay on top.
            var watch = Stopwatch.StartNew();
            await ExecuteAsync(vm, "blockdev-snapshot",
                new Dictionary<string, object?> { ["node"] = activeNode, ["overlay"] = newNode }, ct);
            switched = watch.Elapsed;
            var exported = await ActiveNodeAsync(vm, drive, ct);
            if (exported != newNode)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"after the snapshot of VM {vmId} drive {driveId} the NBD export stayed on node {exported}, not {newNode}");
        }
        if (drive.Chain[^1] != newLeaf)
            await SaveAsync(vm, vm.Manifest.WithDrive(drive with { Layers = drive.Layers.Append(LayerManifest.From(newLeaf)).ToList() }), ct);
        return await DriveStateAsync(vm, driveId, ct) with { SwitchDuration = switched };
    }

    public async Task<DriveState> SwitchBackingChainAsync(VmId vmId, ImageId driveId, IReadOnlyList<ChainLayer> newBacking,
        CancellationToken ct = default)
    {
        if (newBacking.Count == 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the new backing chain of drive {driveId} is empty");
        foreach (var layer in newBacking) Input.RequireAbsolute(layer, "new backing layer");
        using var _ = await _locks.LockAsync(vmId, ct);
        var vm = LiveVm(vmId);
        var drive = vm.Manifest.Drive(driveId);
        var chain = drive.Chain;
        var leaf = chain[^1];
        var oldBacking = chain.SkipLast(1).ToList();
        if (oldBacking.SequenceEqual(newBacking))
        {
            // a repeated switch: the header fix may not have run before (QEMU or this host died right after the switch)
            await WriteBackingFormatAsync(vm, driveId, leaf, newBacking[^1], ct);
            return await DriveStateAsync(vm, driveId, ct);
        }
        if (newBacking.Any(l => BlockNodes.FormatNode(l) == BlockNodes.FormatNode(leaf)))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the new backing chain of drive {driveId} contains its leaf {leaf.Volume}");
        if (drive.MirrorTarget is not null)
            throw new OperationFailedException(ErrorCodes.Conflict, $"VM {vmId} drive {driveId} has a mirror in flight: no backing switch now");

        var top = await AddChainAsync(vm, newBacking, topWritable: false, ct);
        var leafNode = BlockNodes.FormatNode(leaf);
        await SwitchFlush.AheadOfSwitchAsync(leaf.Path, ct);
        // The switch: the leaf is reopened (drained) onto the new backing, and its header made to name it.
        var watch = Stopwatch.StartNew();
        await ExecuteAsync(vm, "blockdev-reopen", new Dictionary<string, object?>
        {
            ["options"] = new[] { BlockNodes.FormatNodeOptions(leaf, top, readOnly: false) },
        }, ct);
        // Same folder: the relative name VDSM writes; another folder (domain): the absolute path.
        var newTop = newBacking[^1];
        var backingName = Path.GetDirectoryName(newTop.Path) == Path.GetDirectoryName(leaf.Path)
            ? Path.GetFileName(newTop.Path)
            : newTop.Path;
        await ExecuteAsync(vm, "change-backing-file", new Dictionary<string, object?>
        {
            ["device"] = leafNode,
            ["image-node-name"] = leafNode,
            ["backing-file"] = backingName,
        }, ct);
        var switched = watch.Elapsed;
        await WriteBackingFormatAsync(vm, driveId, leaf, newTop, ct);
        await DeleteNodesAsync(vm, oldBacking.AsEnumerable().Reverse().Where(l => !newBacking.Contains(l)).ToList(), ct);
        await SaveAsync(vm, vm.Manifest.WithDrive(drive with
        {
            Layers = newBacking.Append(leaf).Select(LayerManifest.From).ToList(),
        }), ct);
        return await DriveStateAsync(vm, driveId, ct) with { SwitchDuration = switched };
    }

    /// <summary>
    /// <c>change-backing-file</c> writes the image's own format (qcow2) as its backing's format, wrong over a raw base:
    /// the header would then name a raw file as qcow2 and every later <c>qemu-img</c> over the chain (the next
    /// migration's new leaf) fails. A stream job whose base is the leaf's own backing copies nothing and, when it ends,
    /// writes the header again with the backing's real format.
    /// </summary>
    private async Task WriteBackingFormatAsync(QemuVm vm, ImageId driveId, ChainLayer leaf, ChainLayer backing, CancellationToken ct)
    {
        if (backing.Format == VolumeFormat.Cow) return;
        var jobId = BlockNodes.HeaderJobId(driveId);
        var backingName = Path.GetDirectoryName(backing.Path) == Path.GetDirectoryName(leaf.Path) ? Path.GetFileName(backing.Path) : backing.Path;
        vm.JobEnds.TryRemove(jobId, out QmpEvent? _);
        await ExecuteAsync(vm, "block-stream", new Dictionary<string, object?>
        {
            ["job-id"] = jobId,
            ["device"] = BlockNodes.FormatNode(leaf),
            ["base-node"] = BlockNodes.FormatNode(backing),
            ["backing-file"] = backingName,
        }, ct);
        if (await WaitForJobEndAsync(vm, jobId, ct) is { } ended && ended.Data.TryGetProperty("error", out var error))
            throw new OperationFailedException(ErrorCodes.JobFailed,
                $"VM {vm.Id} drive {driveId}: writing the backing format ({backing.Format}) into {leaf.Path}'s header failed: {error.GetString()}");
    }

    /// <summary>How long the last pivot of the VM took from <c>block-job-complete</c> to the job's end (for the report's figures).</summary>
    /// <summary>How often a description had to ask QEMU for its full node description (every guest request waits meanwhile).</summary>
    internal long FullNodeDescriptions => Interlocked.Read(ref _fullNodeDescriptions);

    public TimeSpan? LastPivotDuration(VmId vmId) => _vms.TryGetValue(vmId, out var vm) ? vm.LastPivotDuration : null;

    // ---------------------------------------------------------------- disposal

    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        _disposed = true;
        // Only our connections end: the VMs keep running for the next host instance to adopt.
        foreach (var vm in _vms.Values) await vm.Qmp.DisposeAsync();
        _vms.Clear();
    }

    // ---------------------------------------------------------------- internals

    private sealed class QemuVm(VmId id, QmpClient qmp, VmManifest manifest)
    {
        public VmId Id { get; } = id;
        public QmpClient Qmp { get; } = qmp;
        public VmManifest Manifest { get; set; } = manifest;
        public string? DeathReason; // set once, by CompareExchange
        public volatile bool StopRequested;
        public TimeSpan? LastPivotDuration { get; set; }
        /// <summary>The terminal event of each job (COMPLETED/CANCELLED), kept because QEMU dismisses ended jobs.</summary>
        public ConcurrentDictionary<string, QmpEvent> JobEnds { get; } = new();
        public ConcurrentDictionary<string, byte> CancelRequested { get; } = new();
        /// <summary>
        /// Format node → file of every layer this instance added: a switch names its new layers in the manifest only when
        /// it ends, and a description meanwhile (the host reacts to the mirror's end while the pivot closes the source)
        /// would otherwise ask QEMU for its full node description, which held every guest request 16–28 ms here.
        /// </summary>
        public ConcurrentDictionary<string, string> AddedLayers { get; } = new(StringComparer.Ordinal);
        private TaskCompletionSource _jobSignal = new(TaskCreationOptions.RunContinuationsAsynchronously);
        /// <summary>Completes at the next job event or death; waiters then re-check QEMU.</summary>
        public Task JobSignal => Volatile.Read(ref _jobSignal).Task;
        public void Pulse() =>
            Interlocked.Exchange(ref _jobSignal, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();

        public ImageId? DriveOfJob(string jobId) =>
            Manifest.Drives.Select(d => d.ImageId).Cast<ImageId?>().FirstOrDefault(i => BlockNodes.MirrorJobId(i!.Value) == jobId);
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    private QemuVm LiveVm(VmId id)
    {
        ThrowIfDisposed();
        if (!_vms.TryGetValue(id, out var vm))
            throw new OperationFailedException(ErrorCodes.VmNotFound, $"VM {id} is not running on this host (not started or adopted here)");
        if (vm.DeathReason is { } reason)
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {id}'s QEMU (pid {vm.Manifest.Pid}) is gone: {reason}");
        return vm;
    }

    private void Attach(QemuVm vm)
    {
        vm.Qmp.EventReceived += e => OnQmpEvent(vm, e);
        vm.Qmp.Disconnected += reason => OnDisconnected(vm, reason);
        if (!vm.Qmp.IsConnected) OnDisconnected(vm, "QEMU closed the monitor socket");
    }

    private void OnDisconnected(QemuVm vm, string reason)
    {
        var stated = vm.StopRequested ? "stopped on request" : $"QEMU (pid {vm.Manifest.Pid}) went away: {reason}";
        if (Interlocked.CompareExchange(ref vm.DeathReason, stated, null) is not null) return;
        vm.Pulse();
        Raise(new VmStopped(vm.Id, stated));
    }

    private void OnQmpEvent(QemuVm vm, QmpEvent e)
    {
        HypervisorEvent? raised = null;
        var jobId = e.Data.ValueKind == JsonValueKind.Object && e.Data.TryGetProperty("device", out var device)
            ? device.GetString() ?? "" : "";
        var drive = vm.DriveOfJob(jobId);
        switch (e.Name)
        {
            case "BLOCK_JOB_READY" when drive is { } d:
                raised = new BlockJobReady(vm.Id, d, jobId);
                break;
            case "BLOCK_JOB_COMPLETED":
                // every job's end is kept (also the header job's, which is no drive's copy), so its waiter sees an error
                vm.JobEnds[jobId] = e;
                if (drive is not { } ended) break;
                raised = e.Data.TryGetProperty("error", out var error)
                    ? new BlockJobFailed(vm.Id, ended, jobId, error.GetString() ?? "unknown error")
                    : vm.CancelRequested.ContainsKey(jobId)
                        ? new BlockJobCancelled(vm.Id, ended, jobId)
                        : new BlockJobCompleted(vm.Id, ended, jobId);
                break;
            case "BLOCK_JOB_CANCELLED":
                vm.JobEnds[jobId] = e;
                if (drive is { } cancelled) raised = new BlockJobCancelled(vm.Id, cancelled, jobId);
                break;
        }
        vm.Pulse();
        if (raised is not null) Raise(raised);
    }

    private void Raise(HypervisorEvent hypervisorEvent)
    {
        foreach (var handler in EventRaised?.GetInvocationList() ?? [])
        {
            try { ((Action<HypervisorEvent>)handler)(hypervisorEvent); }
            catch (Exception) { /* one faulty subscriber must not keep the event from the others */ }
        }
    }

    private async Task<QemuVm?> TryAdoptAsync(VmId id, CancellationToken ct)
    {
        if (await VmManifest.LoadAsync(ManifestPath(id), ct) is not { } manifest) return null;
        if (!QemuProcess.IsAlive(manifest.Pid, manifest.QmpSocket))
        {
            DeleteFiles(id, manifest);
            return null;
        }
        QmpClient client;
        try
        {
            client = await QmpClient.ConnectAsync(manifest.QmpSocket, AdoptConnectTimeout, ct);
        }
        catch (OperationFailedException) when (!QemuProcess.IsAlive(manifest.Pid, manifest.QmpSocket))
        {
            DeleteFiles(id, manifest);
            return null;
        }
        catch (OperationFailedException)
        {
            // Alive but its monitor does not answer (another client holds it): leave it for a later attempt.
            return null;
        }
        var vm = new QemuVm(id, client, manifest);
        Attach(vm);
        _vms[id] = vm;
        // READY may have been announced while no host listened: say it again so waiters need not poll.
        foreach (var job in await QueryJobsAsync(vm, ct))
        {
            if (job.Phase == BlockJobPhase.Ready) Raise(new BlockJobReady(id, job.Drive, job.JobId));
        }
        return vm;
    }

    private async Task ForgetAsync(QemuVm vm)
    {
        _vms.TryRemove(vm.Id, out _);
        await vm.Qmp.DisposeAsync();
        DeleteFiles(vm.Id, vm.Manifest);
    }

    private void DeleteFiles(VmId id, VmManifest manifest)
    {
        foreach (var file in new[] { ManifestPath(id), Path.Combine(VmsDirectory, $"{id}.pid"), manifest.QmpSocket, manifest.NbdSocket })
        {
            try
            {
                File.Delete(file);
            }
            catch (DirectoryNotFoundException)
            {
                // its folder is gone already (lsm local down removes the socket folders under /run/lsm): nothing left to delete
            }
        }
    }

    private async Task SaveAsync(QemuVm vm, VmManifest manifest, CancellationToken ct)
    {
        await manifest.SaveAsync(ManifestPath(vm.Id), ct);
        vm.Manifest = manifest;
    }

    private async Task<JsonElement> ExecuteAsync(QemuVm vm, string command, object? arguments, CancellationToken ct)
    {
        try
        {
            return await vm.Qmp.ExecuteAsync(command, arguments, _options.CommandTimeout, ct);
        }
        catch (OperationFailedException e) when (e.Code == ErrorCodes.VmNotRunning)
        {
            throw new OperationFailedException(ErrorCodes.VmNotRunning,
                $"VM {vm.Id}'s QEMU (pid {vm.Manifest.Pid}) is gone: {e.Message}", e);
        }
    }

    /// <summary>Adds a chain's nodes that are not there yet, base first, each backing named explicitly; returns the top node.</summary>
    private async Task<string> AddChainAsync(QemuVm vm, IReadOnlyList<ChainLayer> layers, bool topWritable, CancellationToken ct)
    {
        var existing = await NodeNamesAsync(vm, ct);
        string? below = null;
        for (var i = 0; i < layers.Count; i++)
        {
            var layer = layers[i];
            var readOnly = !(topWritable && i == layers.Count - 1);
            if (!existing.Contains(BlockNodes.FileNode(layer)))
                await ExecuteAsync(vm, "blockdev-add", BlockNodes.FileNodeOptions(layer, readOnly), ct);
            if (!existing.Contains(BlockNodes.FormatNode(layer)))
                await ExecuteAsync(vm, "blockdev-add", BlockNodes.FormatNodeOptions(layer, below, readOnly), ct);
            below = BlockNodes.FormatNode(layer);
            vm.AddedLayers[below] = layer.Path;
        }
        return below ?? throw new OperationFailedException(ErrorCodes.InvalidArgument, "a chain needs at least one layer");
    }

    /// <summary>Closes the layers' nodes in the order given (top first), skipping those already gone.</summary>
    private async Task DeleteNodesAsync(QemuVm vm, IReadOnlyList<ChainLayer> layersTopFirst, CancellationToken ct)
    {
        var existing = await NodeNamesAsync(vm, ct);
        foreach (var layer in layersTopFirst)
        {
            foreach (var node in new[] { BlockNodes.FormatNode(layer), BlockNodes.FileNode(layer) })
            {
                if (existing.Contains(node))
                    await ExecuteAsync(vm, "blockdev-del", new Dictionary<string, object?> { ["node-name"] = node }, ct);
            }
            vm.AddedLayers.TryRemove(BlockNodes.FormatNode(layer), out _);
        }
    }

    // From the node graph where QEMU has it (1 ms of its main loop, where even a flat query-named-block-nodes took 10 ms
    // for four 14-layer chains, every guest request waiting meanwhile; see BlockGraph).
    private async Task<HashSet<string>> NodeNamesAsync(QemuVm vm, CancellationToken ct)
    {
        if (await BlockGraphAsync(vm, ct) is { } graph) return graph.NodeNames;
        var nodes = await ExecuteAsync(vm, "query-named-block-nodes", new Dictionary<string, object?> { ["flat"] = true }, ct);
        return nodes.EnumerateArray().Select(n => n.GetProperty("node-name").GetString() ?? "").ToHashSet(StringComparer.Ordinal);
    }

    private async Task<bool> HasBackingAsync(QemuVm vm, string node, CancellationToken ct)
    {
        if (await BlockGraphAsync(vm, ct) is { } graph) return graph.HasBacking(node);
        var nodes = await ExecuteAsync(vm, "query-named-block-nodes", new Dictionary<string, object?> { ["flat"] = true }, ct);
        return nodes.EnumerateArray().Any(n => n.GetProperty("node-name").GetString() == node
            && n.TryGetProperty("backing_file_depth", out var depth) && depth.GetInt32() > 0);
    }

    /// <summary>The node the drive's NBD export sits on: the drive's active layer, as QEMU has it now.</summary>
    private async Task<string> ActiveNodeAsync(QemuVm vm, DriveManifest drive, CancellationToken ct)
    {
        var exports = await ExecuteAsync(vm, "query-block-exports", null, ct);
        foreach (var export in exports.EnumerateArray())
        {
            if (export.GetProperty("id").GetString() == BlockNodes.ExportId(drive.ImageId))
                return export.GetProperty("node-name").GetString() ?? "";
        }
        throw new OperationFailedException(ErrorCodes.Conflict, $"VM {vm.Id} has no NBD export {drive.ExportName} for drive {drive.Image}");
    }

    private async Task<IReadOnlyList<BlockJobInfo>> QueryJobsAsync(QemuVm vm, CancellationToken ct)
    {
        var jobs = await ExecuteAsync(vm, "query-block-jobs", null, ct);
        var list = new List<BlockJobInfo>();
        foreach (var job in jobs.EnumerateArray())
        {
            var jobId = job.GetProperty("device").GetString() ?? "";
            if (vm.DriveOfJob(jobId) is not { } drive) continue;
            var ready = job.TryGetProperty("ready", out var r) && r.GetBoolean();
            var status = job.TryGetProperty("status", out var s) ? s.GetString() : null;
            var phase = status switch
            {
                "concluded" or "null" when job.TryGetProperty("error", out _) => BlockJobPhase.Failed,
                "concluded" or "null" => BlockJobPhase.Completed,
                "aborting" => BlockJobPhase.Cancelled,
                _ => ready ? BlockJobPhase.Ready : BlockJobPhase.Running,
            };
            list.Add(new BlockJobInfo(jobId, drive, phase,
                job.GetProperty("offset").GetInt64(), job.GetProperty("len").GetInt64(), job.GetProperty("speed").GetInt64(),
                job.TryGetProperty("error", out var error) ? error.GetString() : null,
                vm.Manifest.Drives.FirstOrDefault(d => d.ImageId == drive)?.MirrorMode));
        }
        return list;
    }

    private async Task<BlockJobInfo?> FindJobAsync(QemuVm vm, ImageId drive, CancellationToken ct) =>
        (await QueryJobsAsync(vm, ct)).FirstOrDefault(j => j.Drive == drive);

    /// <summary>Only a READY mirror can pivot; one still copying (or gone) fails as the port says, without waiting.</summary>
    private async Task RequireReadyAsync(QemuVm vm, ImageId drive, string jobId, CancellationToken ct)
    {
        var job = await FindJobAsync(vm, drive, ct);
        if (job is null)
        {
            var why = vm.JobEnds.TryGetValue(jobId, out var ended) ? $" (it ended: {ended.Name})" : "";
            throw new OperationFailedException(ErrorCodes.NoSuchJob, $"VM {vm.Id} drive {drive} has no mirror job {jobId} to pivot{why}");
        }
        if (job.Phase != BlockJobPhase.Ready)
            throw new OperationFailedException(ErrorCodes.NoSuchJob,
                $"mirror {jobId} of VM {vm.Id} is {job.Phase}, not READY: {job.Offset} of {job.Length} bytes copied");
    }

    /// <summary>Waits until the job is gone; returns its terminal event when one arrived (else the query saw it vanish).</summary>
    private async Task<QmpEvent?> WaitForJobEndAsync(QemuVm vm, string jobId, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + _options.CommandTimeout;
        while (true)
        {
            var signal = vm.JobSignal;
            if (vm.JobEnds.TryGetValue(jobId, out var ended)) return ended;
            var jobs = await ExecuteAsync(vm, "query-block-jobs", null, ct);
            if (!jobs.EnumerateArray().Any(j => j.GetProperty("device").GetString() == jobId))
                return vm.JobEnds.TryGetValue(jobId, out ended) ? ended : null;
            if (DateTime.UtcNow > deadline)
                throw new OperationFailedException(ErrorCodes.Timeout,
                    $"block job {jobId} of VM {vm.Id} did not end within {_options.CommandTimeout.TotalSeconds:0} s");
            await Task.WhenAny(signal, Task.Delay(250, ct));
            ct.ThrowIfCancellationRequested();
        }
    }

    private async Task<DriveState> DriveStateAsync(QemuVm vm, ImageId drive, CancellationToken ct) =>
        (await DescribeCoreAsync(vm, ct)).Drive(drive);

    private async Task<VmInfo> DescribeCoreAsync(QemuVm vm, CancellationToken ct)
    {
        var exports = await ExecuteAsync(vm, "query-block-exports", null, ct);
        var exportNodes = exports.EnumerateArray().ToDictionary(
            e => e.GetProperty("id").GetString() ?? "", e => e.GetProperty("node-name").GetString() ?? "");
        var graph = await BlockGraphAsync(vm, ct);
        var known = KnownLayerPaths(vm);
        var chains = new Dictionary<ImageId, IReadOnlyList<string>>();
        foreach (var d in vm.Manifest.Drives)
            chains[d.ImageId] = exportNodes.TryGetValue(BlockNodes.ExportId(d.ImageId), out var active) ? graph?.OpenChainBaseFirst(active, known) ?? [] : [];
        if (vm.Manifest.Drives.Any(d => exportNodes.ContainsKey(BlockNodes.ExportId(d.ImageId)) && chains[d.ImageId].Count == 0))
        {
            // a chain through a node neither the manifest nor this host instance named (one an earlier instance added in a
            // switch it did not finish): QEMU's own description of every node, with the file names it opened
            Interlocked.Increment(ref _fullNodeDescriptions);
            var nodes = await ExecuteAsync(vm, "query-named-block-nodes", null, ct);
            var nodesByName = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
            foreach (var node in nodes.EnumerateArray()) nodesByName[node.GetProperty("node-name").GetString() ?? ""] = node;
            foreach (var d in vm.Manifest.Drives)
                chains[d.ImageId] = exportNodes.TryGetValue(BlockNodes.ExportId(d.ImageId), out var active) && nodesByName.TryGetValue(active, out var info)
                    ? BlockNodes.OpenChainLeafFirst(info).AsEnumerable().Reverse().ToList()
                    : [];
        }
        var jobs = await QueryJobsAsync(vm, ct);
        var drives = vm.Manifest.Drives.Select(d => new DriveState(d.ImageId, chains[d.ImageId], vm.Manifest.NbdSocket, d.ExportName,
            jobs.FirstOrDefault(j => j.Drive == d.ImageId))).ToList();
        return new VmInfo(vm.Id, vm.Manifest.Name, vm.Manifest.Pid, vm.DeathReason is null, drives);
    }

    /// <summary>The node graph, or null from a QEMU without the (debug-named) command.</summary>
    private async Task<BlockGraph?> BlockGraphAsync(QemuVm vm, CancellationToken ct)
    {
        try
        {
            return BlockGraph.Parse(await ExecuteAsync(vm, "x-debug-query-block-graph", null, ct));
        }
        // the client turns QEMU's refusal into QMP_ERROR with the refusal inside (QmpClient.ExecuteAsync)
        catch (OperationFailedException e) when (e.Code == ErrorCodes.QmpError && e.InnerException is QmpCommandException { ErrorClass: "CommandNotFound" })
        {
            return null;
        }
    }

    /// <summary>The file each format node this VM's manifest or this instance knows was added for (a node is named after its volume, and added only with that volume's path).</summary>
    private static Dictionary<string, string> KnownLayerPaths(QemuVm vm)
    {
        var known = new Dictionary<string, string>(vm.AddedLayers, StringComparer.Ordinal);
        foreach (var drive in vm.Manifest.Drives)
            foreach (var layer in drive.MirrorTarget is { } target ? drive.Layers.Append(target) : drive.Layers)
                known[BlockNodes.FormatNode(layer.ToLayer())] = layer.Path;
        return known;
    }

    /// <summary>QEMU option values escape a comma by doubling it.</summary>
    private static string EscapeOption(string value) => value.Replace(",", ",,", StringComparison.Ordinal);
}

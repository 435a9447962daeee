using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Inventory;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Management;

/// <summary>
/// The host's part of the operator's commands (reached through DistributedPubSub at
/// <see cref="ManagementTopics.VmManagerPath"/>): creating, starting, stopping and snapshotting its VMs, the guest
/// I/O on them and its verification, and attaching the domains the SPM creates (topic <see cref="ManagementTopics.Domains"/>).
/// Each command runs as a task whose answer is piped to the asker, so the actor keeps answering; the hypervisor
/// serializes the work on one VM. Every change is followed by a report to the inventory.
/// </summary>
public sealed class VmManagerActor : ReceiveActor
{
    private readonly string _hostId;
    private readonly IHypervisor _hypervisor;
    private readonly StoragePool _pool;
    private readonly VmCatalog _catalog;
    private readonly DomainRoots _roots;
    private readonly GuestIo _guestIo;
    private readonly bool _listenForDomains;
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public VmManagerActor(string hostId, IHypervisor hypervisor, StoragePool pool, VmCatalog catalog, DomainRoots roots, GuestIo guestIo,
        bool listenForDomains)
    {
        _listenForDomains = listenForDomains;
        _hostId = hostId;
        _hypervisor = hypervisor;
        _pool = pool;
        _catalog = catalog;
        _roots = roots;
        _guestIo = guestIo;
        var events = Context.System.EventStream;

        Receive<AttachDomain>(attach => _ = AttachAsync(attach, events));
        Receive<CreateVm>(c => Run(() => CreateAsync(c), events, new HostInventoryChanged($"VM {c.Vm} created", c.Vm)));
        Receive<StartVm>(c => Run(() => StartAsync(c.Vm), events, new HostInventoryChanged($"VM {c.Vm} started", c.Vm)));
        Receive<StopVm>(c => Run(() => StopAsync(c.Vm), events, new HostInventoryChanged($"VM {c.Vm} stopped", c.Vm)));
        Receive<SnapshotVm>(c => Run(() => SnapshotAsync(c), events, new HostInventoryChanged($"VM {c.Vm} snapshotted", c.Vm)));
        Receive<GetManagedVm>(c => Run(() => DescribeAsync(c.Vm), null, null));
        Receive<StartGuestIo>(c => Run(() => StartGuestIoAsync(c), null, null));
        Receive<GetGuestIo>(c => Run(() => Task.FromResult<IManagementMessage>(_guestIo.Status(c.Vm)), null, null));
        Receive<VerifyGuest>(c => Run(() => VerifyAsync(c.Vm), null, null));
        Receive<SubscribeAck>(ack => _log.Info("host {HostId} listens for new domains on topic {Topic}", _hostId, ack.Subscribe.Topic));
    }

    protected override void PreStart()
    {
        if (_listenForDomains)
            DistributedPubSub.Get(Context.System).Mediator.Tell(new Subscribe(ManagementTopics.Domains, Self));
    }

    /// <param name="listenForDomains">Subscribe to <see cref="ManagementTopics.Domains"/> through DistributedPubSub; needs a cluster.</param>
    public static Props Props(string hostId, IHypervisor hypervisor, StoragePool pool, VmCatalog catalog, DomainRoots roots, GuestIo guestIo,
        bool listenForDomains = true) =>
        Akka.Actor.Props.Create(() => new VmManagerActor(hostId, hypervisor, pool, catalog, roots, guestIo, listenForDomains));

    private void Run(Func<Task<IManagementMessage>> work, EventStream? changed, HostInventoryChanged? change)
    {
        var replyTo = Sender;
        var log = _log;
        var hostId = _hostId;
        Task.Run(async () =>
        {
            try
            {
                var reply = await work();
                if (changed is not null && change is not null && reply is not ManagementRefused) changed.Publish(change);
                return reply;
            }
            catch (OperationFailedException e)
            {
                log.Warning("host {HostId}: {Error}", hostId, e.Message);
                return new ManagementRefused(e.Code, e.Message);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // A file the host cannot read or write (a ledger, the catalog): an answer with the reason, not a dead letter.
                log.Warning("host {HostId}: {Error}", hostId, e.Message);
                return new ManagementRefused(ErrorCodes.IoError, e.Message);
            }
        }).PipeTo(replyTo);
    }

    /// <summary>Attaches the announced domain (and any other new one under its root) and remembers the root for restarts.</summary>
    private async Task AttachAsync(AttachDomain attach, EventStream changed)
    {
        try
        {
            var attached = await DomainRoots.AttachAllUnderAsync(attach.Root, _pool);
            await _roots.RememberAsync(attach.Root);
            _log.Info("host {HostId} attached {Count} new domains under {Root} (domain {Domain} announced)", _hostId, attached, attach.Root, attach.Domain);
            changed.Publish(new HostInventoryChanged($"domain {attach.Domain} attached"));
        }
        catch (Exception e) when (e is OperationFailedException or IOException or UnauthorizedAccessException)
        {
            _log.Error("host {HostId} cannot attach domain {Domain} under {Root}: {Error}", _hostId, attach.Domain, attach.Root, e.Message);
        }
    }

    private async Task<IManagementMessage> CreateAsync(CreateVm command)
    {
        if (_catalog.Find(command.Vm) is not null || (await _hypervisor.ListVmsAsync()).Any(v => v.Id == command.Vm))
            throw new OperationFailedException(ErrorCodes.Conflict, $"VM {command.Vm} exists on host {_hostId} already");
        var vm = new CatalogedVm(command.Vm, command.Name, command.Disks);
        await WaitForAnnouncedDomainsAsync(vm);
        var chains = await ChainsOfAsync(vm);
        // Recorded before it starts, so a host that dies during the start still knows the VM.
        _catalog.Save(vm);
        VmInfo info;
        try
        {
            info = await _hypervisor.StartVmAsync(new VmSpec(vm.Id, vm.Name, chains));
        }
        catch (OperationFailedException)
        {
            // A creation is all or nothing: the Coordinator removes the disks after this refusal.
            _catalog.Remove(vm.Id);
            throw;
        }
        return new ManagedVm(_hostId, await VmReports.OfRunningAsync(info, _pool));
    }

    /// <summary>How long a new VM waits for the announcement of a domain its disks are on.</summary>
    private static readonly TimeSpan DomainAnnouncementWait = TimeSpan.FromSeconds(10);

    /// <summary>
    /// The SPM announces a new domain to every host through pubsub, and the API answers "created" once the inventory has
    /// it, not once every host attached it: a VM created on it at once can reach this host before the announcement
    /// (CI saw it under load: STALE_RECORD for a domain attached 60 ms later). So a disk on a domain this host does not
    /// have waits a moment for it (the announcement attaches it meanwhile); after that the record is refused as before.
    /// </summary>
    private async Task WaitForAnnouncedDomainsAsync(CatalogedVm vm)
    {
        var deadline = DateTime.UtcNow + DomainAnnouncementWait;
        while (vm.Drives.Any(d => _pool.Domains.All(domain => domain.Id != d.Leaf.Domain)) && DateTime.UtcNow < deadline)
            await Task.Delay(100);
    }

    private async Task<IManagementMessage> StartAsync(VmId id)
    {
        if (await RunningAsync(id) is { } running)
            return new ManagedVm(_hostId, await VmReports.OfRunningAsync(running, _pool));
        var vm = _catalog.Find(id) ?? throw new OperationFailedException(ErrorCodes.VmNotFound, $"host {_hostId} has no VM {id}");
        var info = await _hypervisor.StartVmAsync(new VmSpec(vm.Id, vm.Name, await ChainsOfAsync(vm)));
        return new ManagedVm(_hostId, await VmReports.OfRunningAsync(info, _pool));
    }

    private async Task<IManagementMessage> StopAsync(VmId id)
    {
        await _guestIo.StopAsync(id);
        if (await RunningAsync(id) is { } running)
        {
            // The chains it runs on now (a migration may have moved them) are what it starts on next time.
            SaveLeaves(id, running.Name, await VmReports.CurrentLeavesAsync(running, _pool));
            await _hypervisor.StopVmAsync(id);
        }
        var vm = _catalog.Find(id) ?? throw new OperationFailedException(ErrorCodes.VmNotFound, $"host {_hostId} has no VM {id}");
        return new ManagedVm(_hostId, await VmReports.OfStoppedAsync(vm, _pool));
    }

    private async Task<IManagementMessage> SnapshotAsync(SnapshotVm command)
    {
        var running = await RunningAsync(command.Vm)
                      ?? throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {command.Vm} does not run on host {_hostId}: a live snapshot needs it running");
        foreach (var leaf in command.NewLeaves)
        {
            var layer = new ChainLayer(leaf.Leaf, _pool.Get(leaf.Leaf.Domain).Locate(leaf.Image, leaf.Leaf.Volume), VolumeFormat.Cow);
            await _hypervisor.LiveSnapshotAsync(command.Vm, leaf.Image, layer);
        }
        var after = await _hypervisor.DescribeVmAsync(command.Vm);
        SaveLeaves(command.Vm, running.Name, await VmReports.CurrentLeavesAsync(after, _pool));
        return new ManagedVm(_hostId, await VmReports.OfRunningAsync(after, _pool));
    }

    /// <summary>The leaves a VM runs on now, as its record (its fenced switches are kept apart and stay).</summary>
    private void SaveLeaves(VmId id, string name, IReadOnlyList<DiskLeaf> leaves) => _catalog.Save(new CatalogedVm(id, name, leaves));

    private async Task<IManagementMessage> DescribeAsync(VmId id)
    {
        if (await RunningAsync(id) is { } running)
            return new ManagedVm(_hostId, await VmReports.OfRunningAsync(running, _pool));
        var vm = _catalog.Find(id) ?? throw new OperationFailedException(ErrorCodes.VmNotFound, $"host {_hostId} has no VM {id}");
        return new ManagedVm(_hostId, await VmReports.OfStoppedAsync(vm, _pool));
    }

    private async Task<IManagementMessage> StartGuestIoAsync(StartGuestIo command)
    {
        var running = await RunningAsync(command.Vm);
        if (running is null)
            throw _catalog.Find(command.Vm) is null
                ? new OperationFailedException(ErrorCodes.VmNotFound, $"host {_hostId} has no VM {command.Vm}")
                : new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {command.Vm} is stopped: start it before its guest I/O");
        RequireGuestExport(running);
        return await _guestIo.StartAsync(running, command.BytesPerSecond, command.Seconds, command.FlushIntervalMs, command.Fua);
    }

    /// <summary>
    /// Every block a ledger of the VM names, read back: through the drive's export while the VM runs
    /// (against the running workload's own ledger when one writes), from its chain on disk when it is stopped.
    /// A block missing its durable write is lost; one missing only an acknowledged write no flush covered is in doubt.
    /// </summary>
    private async Task<IManagementMessage> VerifyAsync(VmId id)
    {
        var running = await RunningAsync(id);
        var drives = running is not null
            ? running.Drives.Select(d => d.Image).ToList()
            : (_catalog.Find(id) ?? throw new OperationFailedException(ErrorCodes.VmNotFound, $"host {_hostId} has no VM {id}")).Drives.Select(d => d.Image).ToList();
        if (running is not null) RequireGuestExport(running);
        else RequireDataOnFile(id, _catalog.Find(id)!);
        var stopped = running is null ? _catalog.Find(id) : null;
        long checkedBlocks = 0, lost = 0, inDoubt = 0, durable = 0;
        var details = new List<string>();
        foreach (var image in drives)
        {
            var path = _guestIo.LedgerPath(id, image);
            var live = _guestIo.RunningLedger(id, image);
            if (live is null && !File.Exists(path)) continue;
            using var loaded = live is null ? WriteLedger.Load(path) : null;
            var ledger = live ?? loaded!;
            VerificationReport report;
            if (running is not null)
            {
                var drive = running.Drive(image);
                report = await GuestVerifier.VerifyThroughNbdAsync(drive.GuestSocket, drive.ExportName, ledger);
            }
            else
            {
                var leaf = stopped!.Drives.First(d => d.Image == image).Leaf;
                var domain = _pool.Get(leaf.Domain);
                var leafFormat = (await domain.DescribeVolumeAsync(image, leaf.Volume)).Format;
                report = await GuestVerifier.VerifyImageAsync(domain.Locate(image, leaf.Volume), leafFormat, ledger);
            }
            checkedBlocks += report.BlocksChecked;
            lost += report.Lost.Count;
            inDoubt += report.InDoubt.Count;
            durable += report.DurableBlocks;
            // Losses first: they are what the operator must see.
            details.AddRange(report.Lost.Take(20).Select(m => $"drive {image}: LOST {m}"));
            details.AddRange(report.InDoubt.Take(Math.Max(0, 20 - Math.Min(20, report.Lost.Count))).Select(m => $"drive {image}: in doubt {m}"));
        }
        return new GuestVerified(id, checkedBlocks, lost, inDoubt, details.ToValueList(), durable);
    }

    /// <summary>
    /// Guest I/O and a live verify go through each drive's NBD export; a drive without one (a sim host's, whose disks are
    /// sizes and not data; a libvirt host's without --libvirt-guest-export) has no guest to write or read back.
    /// </summary>
    private void RequireGuestExport(VmInfo running)
    {
        if (running.Drives.FirstOrDefault(d => string.IsNullOrEmpty(d.GuestSocket)) is { } drive)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"VM {running.Id} runs on {_hypervisor.Kind} host {_hostId}, which exports no guest view of drive {drive.Image}: there is no guest I/O " +
                "to start or verify (a sim host's disks hold no data; a libvirt host exports them only with --libvirt-guest-export)");
    }

    /// <summary>A stopped VM is verified from its volumes' files: only a file domain has them.</summary>
    private void RequireDataOnFile(VmId id, CatalogedVm stopped)
    {
        if (stopped.Drives.Select(d => _pool.Get(d.Leaf.Domain)).FirstOrDefault(d => d.Kind != Storage.File.FileStorageDomain.FileKind) is { } domain)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"VM {id} on {_hypervisor.Kind} host {_hostId} has a disk on {domain.Kind} domain {domain.Id}, which holds no data to verify");
    }

    private async Task<VmInfo?> RunningAsync(VmId id) =>
        (await _hypervisor.ListVmsAsync()).FirstOrDefault(v => v.Id == id && v.Running);

    /// <summary>
    /// The chains a VM starts on, from its record, checked first (DESIGN §7.2): only a complete chain of LEGAL volumes
    /// whose top is the image's leaf (nothing lies over it: a record older than a migration or a snapshot would name an
    /// INTERNAL volume) is opened, and never a drive whose switch the record shows begun but not finished.
    /// </summary>
    private async Task<IReadOnlyList<DriveChain>> ChainsOfAsync(CatalogedVm vm)
    {
        var chains = new List<DriveChain>();
        foreach (var drive in vm.Drives)
        {
            if (vm.PendingOf(drive.Image) is { } pending)
                throw new OperationFailedException(ErrorCodes.StaleRecord,
                    $"VM {vm.Id} ({vm.Name}) drive {drive.Image}: a switch from {drive.Leaf} to {pending.Leaf} was begun and nobody can tell whether it " +
                    "took effect (QEMU died during it); while its migration runs, resume it so its probe decides; otherwise both chains are kept " +
                    "for an operator to compare before the VM starts on either");
            VolumeInfo leaf;
            try
            {
                leaf = await _pool.Get(drive.Leaf.Domain).DescribeVolumeAsync(drive.Image, drive.Leaf.Volume);
            }
            catch (OperationFailedException e) when (e.Code is ErrorCodes.DomainNotFound or ErrorCodes.VolumeNotFound or ErrorCodes.ImageNotFound)
            {
                throw new OperationFailedException(ErrorCodes.StaleRecord,
                    $"VM {vm.Id} ({vm.Name}) drive {drive.Image}: its record names {drive.Leaf}, which is gone ({e.Message})");
            }
            if (leaf.Type != VolumeType.Leaf)
                throw new OperationFailedException(ErrorCodes.StaleRecord,
                    $"VM {vm.Id} ({vm.Name}) drive {drive.Image}: its record names {drive.Leaf}, which is an INTERNAL volume now (something lies over it); " +
                    "the record is stale and starting on it would write into another chain's layer");
            var chain = await _pool.ResolveChainAsync(leaf);
            foreach (var layer in chain.Layers)
            {
                var volume = await _pool.Get(layer.Volume.Domain).DescribeVolumeAsync(drive.Image, layer.Volume.Volume);
                if (volume.Legality != Legality.Legal)
                    throw new OperationFailedException(ErrorCodes.StaleRecord,
                        $"VM {vm.Id} ({vm.Name}) drive {drive.Image}: volume {layer.Volume} of its chain is ILLEGAL (incomplete or being removed); it is not opened");
            }
            chains.Add(chain);
        }
        return chains;
    }
}

using System.Collections.Concurrent;
using LiveMigration.Coordinator.Api;
using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Hosting;
using LiveMigration.Coordinator.Hosting;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Hosts;

/// <summary>A host as the API shows it: <see cref="Spm"/> says it runs the SPM singleton now.</summary>
public sealed record HostView(string Id, string Address, bool SpmCapable, bool Spm, DateTimeOffset LastReport, int Vms);

public sealed record ChainLayerView(string Domain, string Image, string Volume);

/// <summary>
/// A VM's disk: <see cref="Domain"/> is its leaf's domain (where the disk is), <see cref="Chain"/> base → leaf.
/// <see cref="Problem"/> says why a disk has no domain ("chain unresolved: ..."), null when it has one.
/// <see cref="BaseFormat"/> ("raw" or "qcow2"; every layer above the base is qcow2) and <see cref="BaseAllocation"/>
/// ("sparse" or "preallocated") are null when the host did not tell (an unresolved chain, an older host).
/// </summary>
public sealed record VmDiskView(string Image, long CapacityBytes, long AllocatedBytes, string? Domain, IReadOnlyList<ChainLayerView> Chain, string? Migration,
    string? Problem = null, string? BaseFormat = null, string? BaseAllocation = null);

public sealed record VmView(string Id, string Name, string Host, bool Running, IReadOnlyList<VmDiskView> Disks);

/// <summary>A page of the VM list: the VMs from <paramref name="Offset"/>, how many match in all, the page size asked (null: all).</summary>
public sealed record VmPage(IReadOnlyList<VmView> Vms, int Total, int Offset, int? Limit);

/// <summary>A disk of a new VM as asked: <see cref="Domain"/> by id or by name; <see cref="Format"/> of its base "raw" (null too) or "qcow2".</summary>
public sealed record NewDiskRequest(long SizeBytes, string Domain, int Snapshots, string? Format = null, bool Preallocated = false);

/// <summary>
/// The operator's management of hosts, domains and VMs, as the API runs it: it checks a request against the
/// inventory (unknown host or domain, not enough space, a disk busy with a migration) before anything changes,
/// asks the SPM for storage changes and the VM's host for VM work, and answers once the inventory shows the change.
/// Refusals are <see cref="OperationFailedException"/>s with an <see cref="ErrorCodes"/> code.
/// </summary>
public sealed class ManagementService(ActorSystem system, IActorRef inventory, IActorRef spm)
{
    private static readonly TimeSpan AskTimeout = TimeSpan.FromSeconds(15);
    private static readonly TimeSpan HostWorkTimeout = TimeSpan.FromSeconds(25);
    private static readonly TimeSpan InventoryCatchUp = TimeSpan.FromSeconds(10);
    /// <summary>Room each empty qcow2 layer is counted for, as the SPM counts it.</summary>
    private const long QcowLayerBytes = 1 << 20;
    public const int MaxSnapshots = 32;

    public static ManagementService From(IServiceProvider services) => new(
        services.GetRequiredService<ActorSystem>(),
        services.GetRequiredService<IRequiredActor<InventoryProxy>>().ActorRef,
        services.GetRequiredService<IRequiredActor<SpmProxy>>().ActorRef);

    public Task<InventorySnapshot> InventoryAsync(CancellationToken ct) =>
        inventory.Ask<InventorySnapshot>(new GetInventory(), AskTimeout, ct);

    // ---------------------------------------------------------------- hosts and domains

    public async Task<IReadOnlyList<HostView>> HostsAsync(CancellationToken ct)
    {
        var snapshot = await InventoryAsync(ct);
        var spmAddress = await SpmAddressAsync(ct);
        var vmsPerHost = snapshot.Vms.GroupBy(v => v.HostId).ToDictionary(g => g.Key, g => g.Count());
        return snapshot.Hosts
            .Select(h => new HostView(h.HostId, h.Address, h.SpmCapable, h.Address == spmAddress, h.LastReport,
                vmsPerHost.GetValueOrDefault(h.HostId)))
            .OrderBy(h => h.Id, StringComparer.Ordinal)
            .ToList();
    }

    // The SPM's last answer, per SPM proxy (one per actor system): a busy SPM (thousands of copies in flight) answered
    // after the ask's 3 s, and every GET /api/hosts (each refresh of the dashboard) waited that long.
    private static readonly ConcurrentDictionary<IActorRef, (string Address, DateTime At)> SpmLocations = new();
    private static readonly TimeSpan SpmLocationFresh = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Where the SPM singleton runs now, or null when it does not answer within a second (none is up, or it is moving).
    /// An answer younger than <see cref="SpmLocationFresh"/> is taken without asking again.
    /// </summary>
    private async Task<string?> SpmAddressAsync(CancellationToken ct)
    {
        if (SpmLocations.TryGetValue(spm, out var known) && DateTime.UtcNow - known.At < SpmLocationFresh) return known.Address;
        try
        {
            var address = (await spm.Ask<SpmLocation>(new GetSpmLocation(), TimeSpan.FromSeconds(1), ct)).Address;
            SpmLocations[spm] = (address, DateTime.UtcNow);
            return address;
        }
        catch (AskTimeoutException)
        {
            return null;
        }
    }

    /// <summary>
    /// Forgets a host gone for good (decommissioned, its machine lost): its VMs as it last reported them leave the lists,
    /// and it no longer holds a domain inactive. Refused while it is a cluster member (it reports, or may report again;
    /// down it first), unknown, or while a disk of its VMs is in a migration. Returns how many VMs went with it.
    /// </summary>
    public async Task<int> ForgetHostAsync(string hostId, CancellationToken ct)
    {
        var snapshot = await InventoryAsync(ct);
        var host = snapshot.Hosts.FirstOrDefault(h => h.HostId == hostId);
        if (host is null && !snapshot.Domains.Any(d => d.UnreachableFrom?.Contains(hostId) == true))
            throw Refuse(HostNotFound, $"no host '{ApiText.Clip(hostId)}' (known: {string.Join(", ", snapshot.Hosts.Select(h => h.HostId))})");
        // A member at its address is this host unless another host reported from there since (a new host on the old
        // address); a member the cluster marked Down is on its way out.
        var member = host is null || snapshot.Hosts.Where(h => h.Address == host.Address).MaxBy(h => h.LastReport)?.HostId != hostId
            ? null
            : Akka.Cluster.Cluster.Get(system).State.Members.FirstOrDefault(m => m.Address.ToString() == host.Address && m.Status != Akka.Cluster.MemberStatus.Down);
        if (member is not null)
            throw Refuse(ErrorCodes.Conflict, $"host {hostId} is a member of the cluster ({member.Status.ToString().ToLowerInvariant()} at {member.Address}): " +
                                              "stop it, and down it if it crashed (`lsm cluster down ADDRESS`), before forgetting it; a running host reports itself again");
        var answer = await inventory.Ask<HostForgetAnswer>(new ForgetHost(hostId, host?.Address, host?.LastReport), AskTimeout, ct);
        if (answer.RefusalCode is { } code) throw Refuse(code, answer.RefusalMessage ?? $"host {hostId} is not forgotten");
        return answer.Vms;
    }

    public async Task<DomainReport> CreateDomainAsync(string? name, string? path, long capacityBytes, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(name))
            throw Refuse(ErrorCodes.InvalidArgument, "name: give the new domain a name, e.g. \"fast-ssd\"");
        if (string.IsNullOrWhiteSpace(path) || !Path.IsPathFullyQualified(path))
            throw Refuse(ErrorCodes.InvalidArgument, $"path: the folder the domain goes under must be an absolute path every host sees, got '{ApiText.Clip(path ?? "")}'");
        if (capacityBytes < 0)
            throw Refuse(ErrorCodes.InvalidArgument, $"capacityBytes must be positive, or 0 for the free space under the path; got {capacityBytes}");
        var snapshot = await InventoryAsync(ct);
        if (snapshot.Domains.FirstOrDefault(d => d.Name == name) is { } existing)
            throw Refuse(ErrorCodes.Conflict, $"a storage domain named '{name}' exists already ({existing.Id})");
        var created = Expect<DomainCreated>(await AskSpmAsync(new CreateDomain(name, path, capacityBytes), ct));
        // The SPM's answer is the owner's statement that the domain exists: the inventory records it before the API says
        // "created", so the next command finds it whatever the hosts' reports are doing meanwhile.
        await RecordCreatedDomainAsync(created.Domain, ct);
        await WaitForInventoryAsync(s => s.Domains.Any(d => d.Id == created.Domain.Id), ct);
        return (await InventoryAsync(ct)).Domains.FirstOrDefault(d => d.Id == created.Domain.Id) ?? created.Domain;
    }

    private async Task RecordCreatedDomainAsync(DomainReport domain, CancellationToken ct)
    {
        try
        {
            // no host id: the SPM's word on a domain it just made, not a host's view of what it reaches ("spm" may be a host's name)
            await inventory.Ask<ReportAcknowledged>(new DomainStatusReport([domain], DateTimeOffset.UtcNow), AskTimeout, ct);
        }
        catch (AskTimeoutException)
        {
            throw Refuse(ErrorCodes.Timeout,
                $"storage domain {domain.Name} ({domain.Id}) was created, but the inventory did not record it within {AskTimeout.TotalSeconds:0} s; it will show once a host reports it");
        }
    }

    // ---------------------------------------------------------------- VMs

    public async Task<IReadOnlyList<VmView>> VmsAsync(CancellationToken ct) => (await VmsPageAsync(null, 0, null, ct)).Vms;

    /// <summary>
    /// The VMs by name (then id), those whose name, id or host contains <paramref name="filter"/> (any case), from
    /// <paramref name="offset"/>, at most <paramref name="limit"/> (all when null), with how many match in all. Only the
    /// page is made into views: the dashboard of a pool of 10,000 VMs shows a page at a time.
    /// </summary>
    public async Task<VmPage> VmsPageAsync(string? filter, int offset, int? limit, CancellationToken ct)
    {
        var snapshot = await InventoryAsync(ct);
        var matching = snapshot.Vms.Where(v => string.IsNullOrEmpty(filter)
                || v.Vm.Name.Contains(filter, StringComparison.OrdinalIgnoreCase)
                || v.Vm.Id.ToString().Contains(filter, StringComparison.OrdinalIgnoreCase)
                || v.HostId.Contains(filter, StringComparison.OrdinalIgnoreCase))
            .OrderBy(v => v.Vm.Name, StringComparer.Ordinal).ThenBy(v => v.Vm.Id.ToString(), StringComparer.Ordinal)
            .ToList();
        // one index of the reservations for all VMs: built per VM it made the list quadratic (22 s for 10,000 VMs in flight)
        var migrations = MigrationsByImage(snapshot);
        var page = matching.Skip(offset).Take(limit ?? int.MaxValue).Select(v => ViewOf(v, migrations)).ToList();
        return new VmPage(page, matching.Count, offset, limit);
    }

    public async Task<VmView> VmAsync(string idOrName, CancellationToken ct)
    {
        var snapshot = await InventoryAsync(ct);
        return ViewOf(Find(snapshot, idOrName), snapshot);
    }

    public async Task<VmView> CreateVmAsync(string? name, string? host, IReadOnlyList<NewDiskRequest>? disks, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Length > 64 || name.Any(char.IsControl))
            throw Refuse(ErrorCodes.InvalidArgument, $"name: 1-64 printable characters, got '{ApiText.Clip(name ?? "")}'");
        if (string.IsNullOrWhiteSpace(host))
            throw Refuse(ErrorCodes.InvalidArgument, "host: name the host to run the VM on, e.g. \"host-1\"");
        if (disks is not { Count: > 0 })
            throw Refuse(ErrorCodes.InvalidArgument,
                "disks: give at least one disk, as {\"sizeBytes\": 1073741824, \"domain\": \"fast-ssd\", \"snapshots\": 0, \"format\": \"raw\", \"preallocated\": false}");
        foreach (var disk in disks)
        {
            if (disk.SizeBytes <= 0 || disk.SizeBytes % 512 != 0)
                throw Refuse(ErrorCodes.InvalidArgument, $"sizeBytes must be a positive multiple of 512, got {disk.SizeBytes}");
            if (disk.Snapshots is < 0 or > MaxSnapshots)
                throw Refuse(ErrorCodes.InvalidArgument, $"snapshots must be between 0 and {MaxSnapshots}, got {disk.Snapshots}");
            if (string.IsNullOrWhiteSpace(disk.Domain))
                throw Refuse(ErrorCodes.InvalidArgument, "domain: each disk names its storage domain, by id or name");
            BaseFormatOf(disk);
        }
        var snapshot = await InventoryAsync(ct);
        if (snapshot.Hosts.All(h => h.HostId != host))
            throw Refuse(HostNotFound, $"no host '{ApiText.Clip(host)}' (known: {string.Join(", ", snapshot.Hosts.Select(h => h.HostId))})");
        if (snapshot.Vms.Any(v => v.Vm.Name == name))
            throw Refuse(ErrorCodes.Conflict, $"a VM named '{name}' exists already");
        var resolved = disks.Select(d => new NewDisk(d.SizeBytes, ResolveDomain(snapshot, d.Domain).Id, d.Snapshots, BaseFormatOf(d),
            d.Preallocated ? VolumeAllocation.Preallocated : VolumeAllocation.Sparse)).ToValueList();
        foreach (var group in resolved.GroupBy(d => d.Domain))
        {
            var domain = snapshot.Domains.First(d => d.Id == group.Key);
            if (!domain.Active)
                throw Refuse(MigrationErrorCodes.DomainInactive, $"storage domain {domain.Name} ({domain.Id}) is not active: " +
                    (domain.UnreachableFrom is { Count: > 0 } hosts ? $"not reachable from {string.Join(", ", hosts)}" : "a host reports it not reachable") +
                    " (e.g. unmounted; see `lsm domains`)");
            var needed = group.Sum(d => d.SizeBytes + d.Snapshots * QcowLayerBytes);
            if (needed > domain.AvailableBytes)
                throw Refuse(ErrorCodes.NotEnoughSpace,
                    $"storage domain {domain.Name} ({domain.Id}) has {domain.AvailableBytes} bytes available; the disks asked of it need {needed} bytes");
        }

        var vm = VmId.New();
        var created = Expect<VmDisksCreated>(await AskSpmAsync(new CreateVmDisks(vm, resolved), ct));
        if (await AskHostAsync(host, new CreateVm(vm, name, created.Disks), ct) is ManagementRefused refused)
        {
            // The host refused (its QEMU did not start): the disks made for it go too, so a failed create leaves nothing.
            await AskSpmAsync(new DeleteVmDisks(vm, created.Disks), ct);
            throw new OperationFailedException(refused.Code, refused.Message);
        }
        return await SettledViewAsync(vm, v => v.Running && v.Drives.Count == created.Disks.Count, ct);
    }

    public async Task<VmView> StartVmAsync(string idOrName, CancellationToken ct)
    {
        var (entry, snapshot) = await LocateAsync(idOrName, ct);
        // DESIGN §7.2: a disk a migration holds is started by that migration's end, not by an operator.
        RefuseWhileMigrating(entry, snapshot, "started");
        Expect<ManagedVm>(await AskHostAsync(entry.HostId, new StartVm(entry.Vm.Id), ct));
        return await SettledViewAsync(entry.Vm.Id, v => v.Running, ct);
    }

    public async Task<VmView> StopVmAsync(string idOrName, CancellationToken ct)
    {
        var (entry, snapshot) = await LocateAsync(idOrName, ct);
        RefuseWhileMigrating(entry, snapshot, "stopped");
        Expect<ManagedVm>(await AskHostAsync(entry.HostId, new StopVm(entry.Vm.Id), ct));
        return await SettledViewAsync(entry.Vm.Id, v => !v.Running, ct);
    }

    /// <summary>A live snapshot of every drive: the SPM makes an empty qcow2 over each leaf, the host moves the drive's writes onto it.</summary>
    public async Task<VmView> SnapshotVmAsync(string idOrName, CancellationToken ct)
    {
        var (entry, snapshot) = await LocateAsync(idOrName, ct);
        RefuseWhileMigrating(entry, snapshot, "snapshotted");
        // The host's view, not the inventory's: the leaves must be the ones QEMU writes to now.
        var current = Expect<ManagedVm>(await AskHostAsync(entry.HostId, new GetManagedVm(entry.Vm.Id), ct)).Vm;
        if (!current.Running)
            throw Refuse(ErrorCodes.VmNotRunning, $"VM {current.Id} ({current.Name}) is stopped: a live snapshot needs it running");
        var leaves = current.Drives.Where(d => d.Chain.Count > 0).Select(d => new DiskLeaf(d.Image, d.Chain[^1])).ToValueList();
        var made = Expect<SnapshotVolumesCreated>(await AskSpmAsync(new CreateSnapshotVolumes(current.Id, leaves), ct));
        Expect<ManagedVm>(await AskHostAsync(entry.HostId, new SnapshotVm(current.Id, made.NewLeaves), ct));
        var expected = current.Drives.ToDictionary(d => d.Image, d => d.Chain.Count + 1);
        return await SettledViewAsync(current.Id, v => v.Drives.All(d => expected.GetValueOrDefault(d.Image) == d.Chain.Count), ct);
    }

    public async Task<GuestIoStatus> StartGuestIoAsync(string idOrName, long bytesPerSecond, int seconds, int flushIntervalMs, bool fua,
        CancellationToken ct)
    {
        if (flushIntervalMs is < 0 or > StartGuestIo.MaxFlushIntervalMs)
            throw Refuse(ErrorCodes.InvalidArgument, $"flushIntervalMs must be between 0 (never) and {StartGuestIo.MaxFlushIntervalMs}, got {flushIntervalMs}");
        if (bytesPerSecond < 0)
            throw Refuse(ErrorCodes.InvalidArgument, $"bytesPerSecond must be 0 (unlimited) or positive, got {bytesPerSecond}");
        if (seconds < 0)
            throw Refuse(ErrorCodes.InvalidArgument, $"seconds must be 0 (until the VM stops) or positive, got {seconds}");
        var (entry, _) = await LocateAsync(idOrName, ct);
        return Expect<GuestIoStatus>(await AskHostAsync(entry.HostId, new StartGuestIo(entry.Vm.Id, bytesPerSecond, seconds, flushIntervalMs, fua), ct));
    }

    public async Task<GuestIoStatus> GuestIoAsync(string idOrName, CancellationToken ct)
    {
        var (entry, _) = await LocateAsync(idOrName, ct);
        return Expect<GuestIoStatus>(await AskHostAsync(entry.HostId, new GetGuestIo(entry.Vm.Id), ct));
    }

    public async Task<GuestVerified> VerifyAsync(string idOrName, CancellationToken ct)
    {
        var (entry, _) = await LocateAsync(idOrName, ct);
        return Expect<GuestVerified>(await AskHostAsync(entry.HostId, new VerifyGuest(entry.Vm.Id), ct));
    }

    // ---------------------------------------------------------------- helpers

    public const string HostNotFound = "HOST_NOT_FOUND";

    private static OperationFailedException Refuse(string code, string message) => new(code, message);

    private async Task<(VmEntry Entry, InventorySnapshot Snapshot)> LocateAsync(string idOrName, CancellationToken ct)
    {
        var snapshot = await InventoryAsync(ct);
        return (Find(snapshot, idOrName), snapshot);
    }

    /// <summary>By id, else by name when exactly one VM has it. A VM listed by two hosts: the one running it, else the freshest report.</summary>
    private static VmEntry Find(InventorySnapshot snapshot, string idOrName)
    {
        var lastReport = snapshot.Hosts.ToDictionary(h => h.HostId, h => h.LastReport);
        IEnumerable<VmEntry> Best(IEnumerable<VmEntry> entries) => entries
            .OrderByDescending(e => e.Vm.Running).ThenByDescending(e => lastReport.GetValueOrDefault(e.HostId));
        if (UuidText.TryParse(idOrName, out var guid))
            return Best(snapshot.Vms.Where(v => v.Vm.Id.Value == guid)).FirstOrDefault()
                   ?? throw Refuse(ErrorCodes.VmNotFound, $"no VM {idOrName}");
        var named = Best(snapshot.Vms.Where(v => v.Vm.Name == idOrName)).DistinctBy(v => v.Vm.Id).ToList();
        return named.Count switch
        {
            1 => named[0],
            0 => throw Refuse(ErrorCodes.VmNotFound, $"no VM named '{ApiText.Clip(idOrName)}'"),
            _ => throw Refuse(ErrorCodes.Conflict, $"{named.Count} VMs are named '{idOrName}' ({string.Join(", ", named.Select(n => n.Vm.Id))}): use the id"),
        };
    }

    private static DomainReport ResolveDomain(InventorySnapshot snapshot, string idOrName)
    {
        if (UuidText.TryParse(idOrName, out var guid))
            return snapshot.Domains.FirstOrDefault(d => d.Id.Value == guid)
                   ?? throw Refuse(ErrorCodes.DomainNotFound, $"no storage domain {idOrName}");
        var named = snapshot.Domains.Where(d => d.Name == idOrName).ToList();
        return named.Count switch
        {
            1 => named[0],
            0 => throw Refuse(ErrorCodes.DomainNotFound,
                $"no storage domain named '{ApiText.Clip(idOrName)}' (known: {string.Join(", ", snapshot.Domains.Select(d => d.Name))})"),
            _ => throw Refuse(ErrorCodes.Conflict, $"{named.Count} storage domains are named '{idOrName}': use the id"),
        };
    }

    private static void RefuseWhileMigrating(VmEntry entry, InventorySnapshot snapshot, string what)
    {
        var images = entry.Vm.Drives.Select(d => d.Image).ToHashSet();
        if (snapshot.Reservations.FirstOrDefault(r => images.Contains(r.Image)) is { } busy)
            throw Refuse(MigrationErrorCodes.DiskBusy,
                $"VM {entry.Vm.Id} ({entry.Vm.Name}) cannot be {what}: its disk {busy.Image} is moving in migration {busy.Migration}; " +
                $"wait for it to end (`lsm migration watch {busy.Migration}`) or, before its point of no return, stop it (`lsm migration cancel {busy.Migration}`)");
    }

    /// <summary>The base format a new disk asks for: "raw" when it names none.</summary>
    private static VolumeFormat BaseFormatOf(NewDiskRequest disk) => disk.Format switch
    {
        null or "raw" => VolumeFormat.Raw,
        "qcow2" => VolumeFormat.Cow,
        _ => throw Refuse(ErrorCodes.InvalidArgument, $"format: a disk's base is \"raw\" or \"qcow2\", got \"{ApiText.Clip(disk.Format)}\""),
    };

    private static string FormatName(VolumeFormat format) => format == VolumeFormat.Cow ? "qcow2" : "raw";

    private static VmView ViewOf(VmEntry entry, InventorySnapshot snapshot) => ViewOf(entry, MigrationsByImage(snapshot));

    private static Dictionary<ImageId, MigrationId> MigrationsByImage(InventorySnapshot snapshot) =>
        snapshot.Reservations.ToDictionary(r => r.Image, r => r.Migration);

    private static VmView ViewOf(VmEntry entry, Dictionary<ImageId, MigrationId> migrations)
    {
        return new VmView(entry.Vm.Id.ToString(), entry.Vm.Name, entry.HostId, entry.Vm.Running,
            entry.Vm.Drives.Select(d => new VmDiskView(
                d.Image.ToString(), d.CapacityBytes, d.AllocatedBytes,
                d.LeafDomain?.ToString(),
                d.Chain.Select(l => new ChainLayerView(l.Domain.ToString(), d.Image.ToString(), l.Volume.ToString())).ToList(),
                migrations.TryGetValue(d.Image, out var m) ? m.ToString() : null,
                d.Unresolved,
                d.BaseFormat is { } format ? FormatName(format) : null,
                d.BaseAllocation switch { VolumeAllocation.Preallocated => "preallocated", VolumeAllocation.Sparse => "sparse", _ => null })).ToList());
    }

    /// <summary>The VM once the inventory shows the change (the host reports it right after), or as it is after the wait.</summary>
    private async Task<VmView> SettledViewAsync(VmId vm, Func<VmReport, bool> settled, CancellationToken ct)
    {
        var snapshot = await WaitForInventoryAsync(s => s.Vms.Any(v => v.Vm.Id == vm && settled(v.Vm)), ct);
        // The host did it and said so; its report has not reached the inventory yet (a host or journal too busy to
        // report for the catch-up's 10 s). Saying "no VM" here would tell the operator it did not happen.
        if (snapshot.Vms.All(v => v.Vm.Id != vm))
            throw Refuse(ErrorCodes.Timeout,
                $"VM {vm}: its host did it, but the inventory has not heard of the VM within {InventoryCatchUp.TotalSeconds:0} s; `lsm vm show {vm}` shows it once the host reports");
        return ViewOf(Find(snapshot, vm.ToString()), snapshot);
    }

    private async Task<InventorySnapshot> WaitForInventoryAsync(Func<InventorySnapshot, bool> condition, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + InventoryCatchUp;
        while (true)
        {
            var snapshot = await InventoryAsync(ct);
            if (condition(snapshot) || DateTime.UtcNow > deadline) return snapshot;
            await Task.Delay(100, ct);
        }
    }

    private async Task<IManagementMessage> AskSpmAsync(IManagementMessage command, CancellationToken ct)
    {
        try
        {
            return await spm.Ask<IManagementMessage>(command, HostWorkTimeout, ct);
        }
        catch (AskTimeoutException)
        {
            throw Refuse(ErrorCodes.Timeout, $"the SPM did not answer {command.GetType().Name} within {HostWorkTimeout.TotalSeconds:0} s (is an SPM-capable host up?)");
        }
    }

    private async Task<IManagementMessage> AskHostAsync(string host, IManagementMessage command, CancellationToken ct)
    {
        var mediator = DistributedPubSub.Get(system).Mediator;
        var path = ManagementTopics.VmManagerPath(host);
        var deadline = DateTime.UtcNow + HostWorkTimeout;
        try
        {
            // A host that just joined is known to this node's mediator only once pubsub's gossip brought its registration
            // (about a second): a command sent before that is dropped, and the operator waited the whole timeout for nothing
            // (CI: `lsm vm start` right after `lsm local up`). An Identify, which every actor answers and which changes
            // nothing, is sent until the host's manager answers; the command itself goes once.
            while (true)
            {
                try
                {
                    await mediator.Ask<ActorIdentity>(new Send(path, new Identify(null)), TimeSpan.FromSeconds(1), ct);
                    break;
                }
                catch (AskTimeoutException) when (DateTime.UtcNow < deadline)
                {
                }
            }
            var left = deadline - DateTime.UtcNow;
            return await mediator.Ask<IManagementMessage>(new Send(path, command), left > TimeSpan.FromSeconds(1) ? left : TimeSpan.FromSeconds(1), ct);
        }
        catch (AskTimeoutException)
        {
            throw Refuse(ErrorCodes.Timeout, $"host {host} did not answer {command.GetType().Name} within {HostWorkTimeout.TotalSeconds:0} s (is it up?)");
        }
    }

    private static T Expect<T>(IManagementMessage reply) where T : IManagementMessage => reply switch
    {
        T expected => expected,
        ManagementRefused refused => throw new OperationFailedException(refused.Code, refused.Message),
        _ => throw new OperationFailedException(ErrorCodes.Conflict, $"unexpected answer {reply.GetType().Name}, expected {typeof(T).Name}"),
    };

}

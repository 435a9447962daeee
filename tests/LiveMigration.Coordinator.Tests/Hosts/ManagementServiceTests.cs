using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Api;
using LiveMigration.Coordinator.Hosts;
using LiveMigration.Coordinator.Inventory;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Coordinator.Tests.Hosts;

/// <summary>
/// The API's management checks against a real inventory (in-memory journal): refusals name the numbers and ids,
/// map to the HTTP status of the contract, and never reach the SPM; the SPM mark follows where the SPM answers from;
/// a VM its host made but the inventory has not heard of yet is a timeout, not "no VM".
/// </summary>
public sealed class ManagementServiceTests() : TestKit(Config, nameof(ManagementServiceTests))
{
    // A cluster node that joins itself only where a test needs DistributedPubSub (the VM work sent to a host).
    private static readonly Config Config = ConfigurationFactory.ParseString("""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0 }
        akka.coordinated-shutdown.phases.cluster-exiting.timeout = 1s
        akka.actor.serialize-messages = on
        akka.persistence.journal.plugin = "akka.persistence.journal.inmem"
        akka.persistence.snapshot-store.plugin = "akka.persistence.snapshot-store.inmem"
        """).WithFallback(ProtocolSerialization.Hocon);

    private const long MiB = 1L << 20;
    private const string Host1Address = "akka.tcp://lsm@127.0.0.1:4061";
    private static readonly DateTimeOffset At = new(2026, 11, 26, 0, 0, 0, TimeSpan.Zero);
    private readonly DomainReport _fast = new(DomainId.New(), "fast", "file", 1024 * MiB, 0, 100 * MiB, Active: true);
    private readonly VmId _web = VmId.New();
    private readonly ImageId _webDisk = ImageId.New();

    /// <summary>Answers where it runs; any other message goes to the probe (which must stay silent on refusals).</summary>
    private sealed class SpmStub : ReceiveActor
    {
        public SpmStub(IActorRef probe)
        {
            Receive<GetSpmLocation>(_ => Sender.Tell(new SpmLocation(Host1Address)));
            ReceiveAny(m => probe.Forward(m));
        }
    }

    private (ManagementService Service, TestProbe Spm, IActorRef Inventory) Start()
    {
        var inventory = Sys.ActorOf(InventoryActor.Props(new InventoryOptions(PublishToCluster: false)));
        var web = new VmReport(_web, "web", Running: true,
            [new DriveReport(_webDisk, [new VolumeRef(_fast.Id, VolumeId.New())], 64 * MiB, 8 * MiB)]);
        inventory.Tell(new HostStatusReport("host-1", Host1Address, SpmCapable: true, [web], At), ActorRefs.NoSender);
        inventory.Tell(new HostStatusReport("host-2", "akka.tcp://lsm@127.0.0.1:4062", SpmCapable: false, [], At), ActorRefs.NoSender);
        inventory.Tell(new DomainStatusReport([_fast], At), ActorRefs.NoSender);
        var spm = CreateTestProbe();
        return (new ManagementService(Sys, inventory, Sys.ActorOf(Akka.Actor.Props.Create(() => new SpmStub(spm.Ref)))), spm, inventory);
    }

    private static async Task<OperationFailedException> RefusedAsync(string code, int status, Func<Task> action)
    {
        var error = await Assert.ThrowsAsync<OperationFailedException>(action);
        Assert.Equal(code, error.Code);
        Assert.Equal(status, HostEndpoints.StatusFor(error.Code));
        return error;
    }

    [Fact]
    public async Task Hosts_mark_the_one_the_spm_answers_from()
    {
        var (service, _, _) = Start();
        var hosts = await service.HostsAsync(CancellationToken.None);
        Assert.Equal(["host-1", "host-2"], hosts.Select(h => h.Id));
        Assert.True(hosts[0].Spm);
        Assert.False(hosts[1].Spm);
        Assert.Equal(1, hosts[0].Vms);
    }

    [Fact]
    public async Task A_vm_that_cannot_be_made_is_refused_with_the_reason_before_the_spm_is_asked()
    {
        var (service, spm, _) = Start();
        var none = CancellationToken.None;
        var host = await RefusedAsync(ManagementService.HostNotFound, 404,
            () => service.CreateVmAsync("db", "host-9", [new NewDiskRequest(16 * MiB, "fast", 0)], none));
        Assert.Contains("host-9", host.Message);
        var domain = await RefusedAsync(ErrorCodes.DomainNotFound, 404,
            () => service.CreateVmAsync("db", "host-1", [new NewDiskRequest(16 * MiB, "slow", 0)], none));
        Assert.Contains("'slow'", domain.Message);
        var space = await RefusedAsync(ErrorCodes.NotEnoughSpace, 422,
            () => service.CreateVmAsync("db", "host-1", [new NewDiskRequest(64 * MiB, "fast", 0), new NewDiskRequest(64 * MiB, _fast.Id.ToString(), 2)], none));
        Assert.Contains($"has {100 * MiB} bytes available", space.Message);
        Assert.Contains($"need {130 * MiB} bytes", space.Message);
        await RefusedAsync(ErrorCodes.Conflict, 409, () => service.CreateVmAsync("web", "host-1", [new NewDiskRequest(16 * MiB, "fast", 0)], none));
        await RefusedAsync(ErrorCodes.InvalidArgument, 400, () => service.CreateVmAsync("db", "host-1", [new NewDiskRequest(1000, "fast", 0)], none));
        await RefusedAsync(ErrorCodes.InvalidArgument, 400, () => service.CreateVmAsync("db", "host-1", [], none));
        var format = await RefusedAsync(ErrorCodes.InvalidArgument, 400,
            () => service.CreateVmAsync("db", "host-1", [new NewDiskRequest(16 * MiB, "fast", 0, "vmdk")], none));
        Assert.Equal("format: a disk's base is \"raw\" or \"qcow2\", got \"vmdk\"", format.Message);
        await RefusedAsync(ErrorCodes.InvalidArgument, 400, () => service.CreateDomainAsync("slow", "relative/dir", 0, none));
        await RefusedAsync(ErrorCodes.Conflict, 409, () => service.CreateDomainAsync("fast", "/srv/lsm", 0, none));
        spm.ExpectNoMsg(TimeSpan.FromMilliseconds(300));
    }

    [Fact]
    public async Task A_host_gone_for_good_is_forgotten_with_its_vms_but_not_while_it_is_a_cluster_member()
    {
        var (service, _, inventory) = Start();
        var none = CancellationToken.None;
        var unknown = await RefusedAsync(ManagementService.HostNotFound, 404, () => service.ForgetHostAsync("host-9", none));
        Assert.Contains("host-1, host-2", unknown.Message);
        // host-3 runs in this very node: a member
        var self = Akka.Cluster.Cluster.Get(Sys);
        inventory.Tell(new HostStatusReport("host-3", self.SelfAddress.ToString(), SpmCapable: false, [], At), ActorRefs.NoSender);
        await self.JoinAsync(self.SelfAddress);
        await AwaitAssertAsync(async () => Assert.Contains((await service.HostsAsync(none)), h => h.Id == "host-3"));
        var member = await RefusedAsync(ErrorCodes.Conflict, 409, () => service.ForgetHostAsync("host-3", none));
        Assert.Contains("is a member of the cluster", member.Message);

        // host-1 (not a member: its process is gone) with its VM web
        Assert.Equal(1, await service.ForgetHostAsync("host-1", none));

        var snapshot = await service.InventoryAsync(none);
        Assert.DoesNotContain(snapshot.Hosts, h => h.HostId == "host-1");
        Assert.DoesNotContain(snapshot.Vms, v => v.Vm.Id == _web);
    }

    [Fact]
    public async Task A_vm_is_not_made_on_a_domain_a_host_cannot_reach_and_the_refusal_names_the_host()
    {
        var (service, spm, inventory) = Start();
        inventory.Tell(new DomainStatusReport([_fast with { AvailableBytes = 0, Active = false }], At.AddSeconds(1), "host-2"), ActorRefs.NoSender);
        await AwaitAssertAsync(async () => Assert.False((await inventory.Ask<InventorySnapshot>(new GetInventory())).Domains.Single().Active));

        var refused = await RefusedAsync(MigrationErrorCodes.DomainInactive, 422,
            () => service.CreateVmAsync("db", "host-1", [new NewDiskRequest(16 * MiB, "fast", 0)], CancellationToken.None));

        Assert.Contains("not reachable from host-2", refused.Message);
        spm.ExpectNoMsg(TimeSpan.FromMilliseconds(300));
    }

    [Fact]
    public async Task A_vm_whose_disk_is_migrating_is_neither_stopped_nor_snapshotted()
    {
        var (service, spm, inventory) = Start();
        var migration = MigrationId.New();
        Assert.IsType<DisksReserved>(await inventory.Ask<IInventoryMessage>(new ReserveDisks(migration, _web, [_webDisk]), TimeSpan.FromSeconds(5)));

        var stop = await RefusedAsync(MigrationErrorCodes.DiskBusy, 409, () => service.StopVmAsync("web", CancellationToken.None));
        Assert.Contains(migration.ToString(), stop.Message);
        await RefusedAsync(MigrationErrorCodes.DiskBusy, 409, () => service.SnapshotVmAsync(_web.ToString(), CancellationToken.None));
        spm.ExpectNoMsg(TimeSpan.FromMilliseconds(300));

        var shown = await service.VmAsync("web", CancellationToken.None);
        Assert.Equal(migration.ToString(), Assert.Single(shown.Disks).Migration);
        Assert.Equal(_fast.Id.ToString(), shown.Disks[0].Domain);
        await RefusedAsync(ErrorCodes.VmNotFound, 404, () => service.VmAsync("nope", CancellationToken.None));
    }

    [Fact]
    public async Task A_domain_the_api_says_it_created_is_in_the_inventory_though_no_host_reported_it_yet()
    {
        var (service, spm, inventory) = Start();
        var made = new DomainReport(DomainId.New(), "sdA", "file", 1024 * MiB, 0, 1024 * MiB, Active: true);

        var creating = service.CreateDomainAsync("sdA", "/srv/lsm", 0, CancellationToken.None);
        spm.ExpectMsg<CreateDomain>(TimeSpan.FromSeconds(15));
        spm.LastSender.Tell(new DomainCreated(made, "/srv/lsm"));
        var created = await creating;

        Assert.Equal(made.Id, created.Id);
        // recorded from the SPM's answer (no host reports here: before, the API's wait ran out and the domain was not there)
        var domains = (await service.InventoryAsync(CancellationToken.None)).Domains;
        Assert.Equal(["fast", "sdA"], domains.Select(d => d.Name));
        // and a host report that has not attached it yet does not take it away
        inventory.Tell(new DomainStatusReport([_fast], At.AddMinutes(1), "host-2"), ActorRefs.NoSender);
        Assert.Contains((await service.InventoryAsync(CancellationToken.None)).Domains, d => d.Id == made.Id);
    }

    [Fact]
    public async Task A_disk_whose_chain_the_host_could_not_resolve_shows_with_no_domain_and_the_reason()
    {
        var (service, _, inventory) = Start();
        var broken = new VmReport(VmId.New(), "broken", Running: true, [new DriveReport(ImageId.New(), [], 64 * MiB, 0)]);
        inventory.Tell(new HostStatusReport("host-2", "akka.tcp://lsm@127.0.0.1:4062", SpmCapable: false, [broken], At.AddMinutes(1)), ActorRefs.NoSender);

        var view = await service.VmAsync("broken", CancellationToken.None);

        var disk = Assert.Single(view.Disks);
        Assert.Null(disk.Domain);
        Assert.Empty(disk.Chain);
        Assert.StartsWith("chain unresolved", disk.Problem);
        Assert.Equal(2, (await service.VmsAsync(CancellationToken.None)).Count);
    }

    [Fact]
    public async Task The_vm_list_pages_in_name_order_and_keeps_the_vms_whose_name_id_or_host_has_the_filter()
    {
        var (service, _, inventory) = Start();
        var vms = Enumerable.Range(0, 30).Select(i => new VmReport(VmId.New(), $"tenant-{i:D2}", Running: true, [])).ToList();
        inventory.Tell(new HostStatusReport("host-2", "akka.tcp://lsm@127.0.0.1:4062", SpmCapable: false, vms.ToValueList(), At.AddMinutes(1)), ActorRefs.NoSender);
        await AwaitAssertAsync(async () => Assert.Equal(31, (await service.VmsAsync(CancellationToken.None)).Count));

        var second = await service.VmsPageAsync(null, 10, 10, CancellationToken.None);
        Assert.Equal((31, 10, (int?)10), (second.Total, second.Offset, second.Limit));
        // the one VM of the fixture sorts before "tenant-…" or after; either way the page is ten names in order
        Assert.Equal(10, second.Vms.Count);
        Assert.Equal(second.Vms.Select(v => v.Name).Order(StringComparer.Ordinal), second.Vms.Select(v => v.Name));

        var filtered = await service.VmsPageAsync("TENANT-1", 0, 5, CancellationToken.None);
        Assert.Equal(10, filtered.Total);
        Assert.Equal(["tenant-10", "tenant-11", "tenant-12", "tenant-13", "tenant-14"], filtered.Vms.Select(v => v.Name));
        var byId = await service.VmsPageAsync(vms[7].Id.ToString()[..13], 0, null, CancellationToken.None);
        Assert.Equal("tenant-07", Assert.Single(byId.Vms).Name);
        Assert.Equal(30, (await service.VmsPageAsync("host-2", 0, 1, CancellationToken.None)).Total);
        Assert.Equal("web", Assert.Single((await service.VmsPageAsync("host-1", 0, null, CancellationToken.None)).Vms).Name);
        Assert.Empty((await service.VmsPageAsync(null, 40, 10, CancellationToken.None)).Vms);
    }

    /// <summary>The SPM of a create: makes the disks asked for (on paper).</summary>
    private sealed class DiskMaker : ReceiveActor
    {
        public DiskMaker() => Receive<CreateVmDisks>(create => Sender.Tell(new VmDisksCreated(create.Vm,
            create.Disks.Select(d => new DiskLeaf(ImageId.New(), new VolumeRef(d.Domain, VolumeId.New()))).ToValueList())));
    }

    /// <summary>A host's VM manager that makes the VM and says so, but whose report never reaches the inventory.</summary>
    private sealed class SilentHost : ReceiveActor
    {
        public SilentHost() => Receive<CreateVm>(create => Sender.Tell(new ManagedVm("host-1", new VmReport(create.Vm, create.Name, Running: true,
            create.Disks.Select(d => new DriveReport(d.Image, [d.Leaf], 16 * MiB, 0)).ToValueList()))));
    }

    [Fact]
    public async Task A_vm_its_host_made_but_the_inventory_has_not_heard_of_is_answered_timeout_not_not_found()
    {
        var cluster = Akka.Cluster.Cluster.Get(Sys);
        cluster.Join(cluster.SelfAddress);
        await AwaitConditionAsync(() => Task.FromResult(cluster.SelfMember.Status == Akka.Cluster.MemberStatus.Up), TimeSpan.FromSeconds(20));
        var (_, _, inventory) = Start();
        var host = Sys.ActorOf(Akka.Actor.Props.Create(() => new SilentHost()), ManagementTopics.VmManagerName("host-1"));
        Akka.Cluster.Tools.PublishSubscribe.DistributedPubSub.Get(Sys).Mediator.Tell(new Akka.Cluster.Tools.PublishSubscribe.Put(host));
        var service = new ManagementService(Sys, inventory, Sys.ActorOf(Akka.Actor.Props.Create(() => new DiskMaker())));

        var error = await RefusedAsync(ErrorCodes.Timeout, 503,
            () => service.CreateVmAsync("db", "host-1", [new NewDiskRequest(16 * MiB, "fast", 0)], CancellationToken.None));
        Assert.Contains("its host did it", error.Message);
    }
}

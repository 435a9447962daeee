using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Api;
using LiveMigration.Coordinator.Hosts;
using LiveMigration.Coordinator.Inventory;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Tests.Hosts;

/// <summary>
/// The API's VM work that goes to a host through DistributedPubSub (a one-node cluster here): a VM its host made, but which
/// the inventory has not heard of within the catch-up (a host too busy to report), is answered 503 TIMEOUT saying what
/// happened, never 404 "no VM" for a VM that exists.
/// </summary>
public sealed class ManagementServiceClusterTests() : TestKit(Config, nameof(ManagementServiceClusterTests))
{
    private static readonly Config Config = ConfigurationFactory.ParseString("""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp.hostname = 127.0.0.1
        akka.remote.dot-netty.tcp.port = 0
        akka.persistence.journal.plugin = "akka.persistence.journal.inmem"
        akka.persistence.snapshot-store.plugin = "akka.persistence.snapshot-store.inmem"
        """);

    private const long MiB = 1L << 20;
    private static readonly DateTimeOffset At = new(2026, 12, 5, 0, 0, 0, TimeSpan.Zero);

    /// <summary>The SPM: makes the disks asked for (on paper).</summary>
    private sealed class SpmStub : ReceiveActor
    {
        public SpmStub() => Receive<CreateVmDisks>(create => Sender.Tell(new VmDisksCreated(create.Vm,
            create.Disks.Select(d => new DiskLeaf(ImageId.New(), new VolumeRef(d.Domain, VolumeId.New()))).ToValueList())));
    }

    /// <summary>The host's VM manager: makes the VM and says so, but its report never reaches the inventory.</summary>
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

        var fast = new DomainReport(DomainId.New(), "fast", "file", 1024 * MiB, 0, 500 * MiB, Active: true);
        var inventory = Sys.ActorOf(InventoryActor.Props(new InventoryOptions(PublishToCluster: false)));
        inventory.Tell(new HostStatusReport("host-1", cluster.SelfAddress.ToString(), SpmCapable: true, [], At), ActorRefs.NoSender);
        inventory.Tell(new DomainStatusReport([fast], At), ActorRefs.NoSender);
        var host = Sys.ActorOf(Props.Create(() => new SilentHost()), ManagementTopics.VmManagerName("host-1"));
        DistributedPubSub.Get(Sys).Mediator.Tell(new Put(host));
        var service = new ManagementService(Sys, inventory, Sys.ActorOf(Props.Create(() => new SpmStub())));

        var error = await Assert.ThrowsAsync<OperationFailedException>(() =>
            service.CreateVmAsync("db", "host-1", [new NewDiskRequest(16 * MiB, "fast", 0)], CancellationToken.None));

        Assert.Equal(ErrorCodes.Timeout, error.Code);
        Assert.Equal(503, HostEndpoints.StatusFor(error.Code));
        Assert.Contains("its host did it", error.Message);
    }
}

using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Hosts;
using LiveMigration.Coordinator.Inventory;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Coordinator.Tests.Inventory;

/// <summary>On a one-node cluster, a change of a host's VMs the inventory journals reaches every Coordinator's host directory.</summary>
public sealed class InventoryPubSubTests() : TestKit(Config, nameof(InventoryPubSubTests))
{
    private static readonly Config Config = ConfigurationFactory.ParseString("""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0 }
        akka.cluster.roles = [coordinator]
        akka.coordinated-shutdown.phases.cluster-exiting.timeout = 1s
        akka.actor.serialize-messages = on
        akka.persistence.journal.plugin = "akka.persistence.journal.inmem"
        akka.persistence.snapshot-store.plugin = "akka.persistence.snapshot-store.inmem"
        """).WithFallback(ProtocolSerialization.Hocon);

    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    /// <summary>
    /// A one-node cluster with a publishing inventory and a host directory listening to it, once the directory has heard
    /// host-1 run the pool's VM; returns the time of that report.
    /// </summary>
    private (InventoryFixtures Pool, HostDirectory Directory, IActorRef Inventory, DateTimeOffset At) DirectoryHearingHost1()
    {
        var cluster = Cluster.Get(Sys);
        cluster.Join(cluster.SelfAddress);
        AwaitCondition(() => cluster.SelfMember.Status == MemberStatus.Up, Wait);
        var pool = new InventoryFixtures();
        var directory = new HostDirectory();
        Sys.ActorOf(HostDirectoryListener.Props(directory));
        var inventory = Sys.ActorOf(InventoryActor.Props(new InventoryOptions(PublishToCluster: true)));

        // the listener's subscription is asynchronous: a new host view (a new epoch each time) until the directory has it
        var at = InventoryFixtures.T0;
        AwaitAssert(() =>
        {
            at = at.AddSeconds(1);
            inventory.Tell(pool.HostReport("host-1", at, pool.VmReport()) with { Epoch = at.UtcTicks, Vms = [pool.VmReport() with { Name = $"web {at:ss}" }] }, TestActor);
            ExpectMsg<ReportAcknowledged>(Wait);
            Assert.Equal("host-1", directory.HostOf(pool.Vm));
        }, Wait, TimeSpan.FromMilliseconds(200));
        return (pool, directory, inventory, at);
    }

    [Fact]
    public void A_change_the_inventory_journals_reaches_the_host_directory_through_the_topic()
    {
        var (pool, directory, inventory, at) = DirectoryHearingHost1();

        // a change in parts: the VM is gone from host-1
        inventory.Tell(pool.HostReport("host-1", at.AddSeconds(1)) with { Epoch = at.UtcTicks, Seq = 1, Whole = false, WholeEnds = false, Gone = [pool.Vm] }, TestActor);
        Assert.False(ExpectMsg<ReportAcknowledged>(Wait).Resync);
        AwaitAssert(() => Assert.Null(directory.HostOf(pool.Vm)), Wait);
    }

    [Fact]
    public void A_forgotten_host_leaves_the_host_directory_through_the_topic()
    {
        var (pool, directory, inventory, _) = DirectoryHearingHost1();

        inventory.Tell(new ForgetHost("host-1"), TestActor);

        Assert.Equal(new HostForgetAnswer("host-1", 1), ExpectMsg<HostForgetAnswer>(Wait));
        // the steps of a VM it ran are not sent to it any more (another host that lists the VM, or none, answers)
        // both awaited: the listener applies the forget on its own thread, the VM first, then the addresses
        AwaitAssert(() =>
        {
            Assert.Null(directory.HostOf(pool.Vm));
            Assert.Null(directory.HostAt(pool.HostReport("host-1").Address));
        }, Wait);
    }
}

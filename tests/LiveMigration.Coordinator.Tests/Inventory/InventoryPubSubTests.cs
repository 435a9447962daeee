using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Inventory;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Coordinator.Tests.Inventory;

/// <summary>On a one-node cluster, reports published on the inventory topic reach the inventory.</summary>
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

    [Fact]
    public void A_report_published_on_the_inventory_topic_reaches_the_inventory()
    {
        var cluster = Cluster.Get(Sys);
        cluster.Join(cluster.SelfAddress);
        AwaitCondition(() => cluster.SelfMember.Status == MemberStatus.Up, Wait);
        var pool = new InventoryFixtures();
        var inventory = Sys.ActorOf(InventoryActor.Props(new InventoryOptions(SubscribeToReports: true)));
        var mediator = DistributedPubSub.Get(Sys).Mediator;

        // the subscription is asynchronous: publish until the inventory has heard it
        AwaitAssert(() =>
        {
            mediator.Tell(new Publish(InventoryTopics.Reports, pool.HostReport("host-1", InventoryFixtures.T0, pool.VmReport())));
            inventory.Tell(new LocateVm(pool.Vm), TestActor);
            Assert.Equal(new VmLocation(pool.Vm, "host-1"), ExpectMsg<VmLocation>(Wait));
        }, Wait, TimeSpan.FromMilliseconds(100));
    }
}

using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Inventory;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Coordinator.Tests.Inventory;

/// <summary>A finished migration's disks are released for certain: the release is sent again until the inventory confirms it.</summary>
public sealed class ReservationReleaserTests() : TestKit(Config, nameof(ReservationReleaserTests))
{
    private static readonly Config Config = ConfigurationFactory.ParseString("""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0 }
        akka.coordinated-shutdown.phases.cluster-exiting.timeout = 1s
        """).WithFallback(ProtocolSerialization.Hocon);

    [Fact]
    public void A_release_the_inventory_does_not_confirm_is_sent_again_until_it_does()
    {
        var inventory = CreateTestProbe();
        var releaser = Sys.ActorOf(ReservationReleaser.Props(inventory.Ref));
        var migration = MigrationId.New();

        releaser.Tell(new MigrationStatusChanged(migration, "running", [], DateTimeOffset.UtcNow));
        inventory.ExpectNoMsg(TimeSpan.FromMilliseconds(300));
        releaser.Tell(new MigrationStatusChanged(migration, "completed", [], DateTimeOffset.UtcNow, Finished: true));
        Assert.Equal(new ReleaseDisks(migration), inventory.ExpectMsg<ReleaseDisks>());
        // lost: sent again
        Assert.Equal(new ReleaseDisks(migration), inventory.ExpectMsg<ReleaseDisks>(ReservationReleaser.FirstResendDelay * 3));

        inventory.Reply(new DisksReleased(migration));
        inventory.ReceiveWhile(TimeSpan.FromMilliseconds(300), m => m);
        inventory.ExpectNoMsg(ReservationReleaser.FirstResendDelay * 4);
    }
}

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

    [Fact]
    public void A_release_names_where_each_disk_lies_now_from_the_final_view_the_saga_published()
    {
        var inventory = CreateTestProbe();
        var releaser = Sys.ActorOf(ReservationReleaser.Props(inventory.Ref));
        var migration = MigrationId.New();
        var (a, b) = (DomainId.New(), DomainId.New());
        var (completed, rolledBack, abandoned) = (ImageId.New(), ImageId.New(), ImageId.New());
        DiskView Disk(ImageId image, string phase) => new(image, a, b, phase, null, 1, 0, 0, null, null, []);
        var final = new MigrationView(migration, VmId.New(), "failed", true, MigrationStrategy.PreCopy,
            [Disk(completed, "Completed"), Disk(rolledBack, "RolledBack"), Disk(abandoned, "Abandoned")], null, null, null, null);

        releaser.Tell(new MigrationStatusChanged(migration, "failed", [], DateTimeOffset.UtcNow, Finished: true, FinalView: final));
        // the completed disk is on its destination, the rolled back one on its source; an abandoned one is the operator's to look at
        var release = inventory.ExpectMsg<ReleaseDisks>();
        Assert.Equal([new DiskPlace(completed, b), new DiskPlace(rolledBack, a)], release.Places!);
        inventory.Reply(new DisksReleased(migration));
    }
}

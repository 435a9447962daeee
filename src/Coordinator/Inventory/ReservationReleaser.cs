using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Inventory;

/// <summary>Frees a migration's disks in the inventory once its saga says it has ended, so the next move of those disks may start.</summary>
public sealed class ReservationReleaser : ReceiveActor
{
    public ReservationReleaser(IActorRef inventory)
    {
        Receive<MigrationStatusChanged>(changed =>
        {
            if (changed.Finished) inventory.Tell(new ReleaseDisks(changed.MigrationId));
        });
        Receive<SubscribeAck>(_ => { });
        Receive<DisksReleased>(_ => { });
    }

    public static Props Props(IActorRef inventory) => Akka.Actor.Props.Create(() => new ReservationReleaser(inventory));

    protected override void PreStart() =>
        DistributedPubSub.Get(Context.System).Mediator.Tell(new Subscribe(MigrationStatusChanged.Topic, Self));
}

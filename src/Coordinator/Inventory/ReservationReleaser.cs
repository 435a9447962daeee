using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Inventory;

/// <summary>
/// Frees a migration's disks in the inventory once its saga says it has ended, so the next move of those disks may
/// start. A release is delivered, not sent: it is sent again with a growing pause until the inventory answers
/// <see cref="DisksReleased"/> (a release lost while the inventory singleton moves would hold the disks for good).
/// Releasing is idempotent in the inventory, so a repeat, or every Coordinator's releaser doing it, is harmless.
/// </summary>
public sealed class ReservationReleaser : ReceiveActor, IWithTimers
{
    private sealed record Resend;

    public static readonly TimeSpan FirstResendDelay = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxResendDelay = TimeSpan.FromSeconds(10);
    private const string ResendTimer = "resend";

    private readonly HashSet<MigrationId> _unconfirmed = [];
    private readonly Dictionary<MigrationId, ValueList<DiskPlace>?> _places = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private TimeSpan _resendDelay = FirstResendDelay;

    public ITimerScheduler Timers { get; set; } = null!;

    public ReservationReleaser(IActorRef inventory)
    {
        Receive<MigrationStatusChanged>(changed =>
        {
            if (!changed.Finished) return;
            _places[changed.MigrationId] = PlacesOf(changed.FinalView);
            inventory.Tell(new ReleaseDisks(changed.MigrationId, _places[changed.MigrationId]));
            if (_unconfirmed.Add(changed.MigrationId) && !Timers.IsTimerActive(ResendTimer))
            {
                _resendDelay = FirstResendDelay;
                Timers.StartSingleTimer(ResendTimer, new Resend(), _resendDelay);
            }
        });
        Receive<DisksReleased>(released =>
        {
            _unconfirmed.Remove(released.Migration);
            _places.Remove(released.Migration);
            if (_unconfirmed.Count == 0) Timers.Cancel(ResendTimer);
        });
        Receive<Resend>(_ =>
        {
            if (_unconfirmed.Count == 0) return;
            _log.Info("The inventory has not confirmed the release of the disks of {Count} finished migration(s); sending again", _unconfirmed.Count);
            foreach (var migration in _unconfirmed) inventory.Tell(new ReleaseDisks(migration, _places.GetValueOrDefault(migration)));
            _resendDelay = TimeSpan.FromTicks(Math.Min(_resendDelay.Ticks * 2, MaxResendDelay.Ticks));
            Timers.StartSingleTimer(ResendTimer, new Resend(), _resendDelay);
        });
        Receive<SubscribeAck>(_ => { });
    }

    /// <summary>
    /// Where each disk of a finished migration lies: its destination when it completed, its source when it was rolled back
    /// or skipped; an abandoned disk is the operator's to look at, so it is not named.
    /// </summary>
    public static ValueList<DiskPlace>? PlacesOf(MigrationView? final) =>
        final?.Disks.Select(d => d.Phase switch
            {
                nameof(DiskPhase.Completed) => new DiskPlace(d.Image, d.Destination),
                // a split chain's move that never started changed nothing: free at once
                nameof(DiskPhase.Skipped) when d.MakesWhole => null,
                nameof(DiskPhase.RolledBack) or nameof(DiskPhase.Skipped) => new DiskPlace(d.Image, d.Source),
                _ => null,
            })
            .OfType<DiskPlace>().ToValueList();

    public static Props Props(IActorRef inventory) => Akka.Actor.Props.Create(() => new ReservationReleaser(inventory));

    protected override void PreStart() =>
        DistributedPubSub.Get(Context.System).Mediator.Tell(new Subscribe(MigrationStatusChanged.Topic, Self));
}

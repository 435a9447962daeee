using Akka.Actor;
using Akka.Event;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Migration;

/// <summary>
/// Fault plan only (tests): the sender of an old command the Coordinator replays late. The migration's own actor may
/// have passivated by the time the host answers, so this one hears the answer and logs it, for a test to read what
/// the host made of the stale command (refused, answered from memory, or done again).
/// </summary>
public sealed class LateCommandWitness : ReceiveActor
{
    public static Props Props(OperationId operation) => Akka.Actor.Props.Create(() => new LateCommandWitness(operation));

    public LateCommandWitness(OperationId operation)
    {
        var log = Context.GetLogger();
        Context.SetReceiveTimeout(TimeSpan.FromMinutes(2));
        Receive<OperationSucceeded>(ok =>
        {
            log.Warning("Fault plan: the late copy of {Operation} was answered: succeeded ({Detail})", operation, ok.Outcome.Detail);
            Context.Stop(Self);
        });
        Receive<OperationFailed>(failed =>
        {
            log.Warning("Fault plan: the late copy of {Operation} was answered: {Code} ({Message})", operation, failed.Code, failed.Message);
            Context.Stop(Self);
        });
        Receive<OperationProgress>(_ => { });
        Receive<ReceiveTimeout>(_ =>
        {
            log.Warning("Fault plan: the late copy of {Operation} was not answered within 2 minutes", operation);
            Context.Stop(Self);
        });
    }
}

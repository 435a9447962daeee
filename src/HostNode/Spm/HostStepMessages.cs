using Akka.Event;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Spm;

/// <summary>A step's storage or hypervisor work ended; piped back to the actor that ran it. Never leaves the process.</summary>
internal sealed record StepFinished(OperationId Operation, IHostReply Reply);

/// <summary>Bytes done of a running step, told to the actor from the copy's progress callback. Never leaves the process.</summary>
internal sealed record StepProgressed(OperationId Operation, long Done, long Total);

/// <summary>How a failed port call becomes the wire answer: the code decides, and only timeouts and I/O errors are worth a retry.</summary>
internal static class StepReplies
{
    /// <summary>Logs how a step ended; after a success, tells the host's reporter that storage or a chain changed.</summary>
    public static void Announce(StepFinished finished, ILoggingAdapter log, EventStream events)
    {
        if (finished.Reply is OperationFailed f)
        {
            log.Warning("{Operation} failed with {Code} (transient {Transient}): {Message}", f.Operation, f.Code, f.Transient, f.Message);
            return;
        }
        log.Info("{Operation} succeeded", finished.Operation);
        events.Publish(new LiveMigration.HostNode.Inventory.HostStateChanged(finished.Operation));
    }

    public static OperationFailed Failed(OperationId operation, Exception error) => error switch
    {
        OperationFailedException e => new OperationFailed(operation, e.Code, e.Message, IsTransient(e.Code)),
        AggregateException { InnerExceptions.Count: 1 } a => Failed(operation, a.InnerExceptions[0]),
        TimeoutException or OperationCanceledException =>
            new OperationFailed(operation, ErrorCodes.Timeout, $"{operation}: {error.Message}", Transient: true),
        // Anything else is a host-side fault the port did not classify (a broken pipe, a full disk):
        // worth a bounded retry by the saga rather than a rollback.
        _ => new OperationFailed(operation, ErrorCodes.IoError, $"{operation}: {error.GetType().Name}: {error.Message}", Transient: true),
    };

    public static bool IsTransient(string code) => code is ErrorCodes.Timeout or ErrorCodes.IoError or ErrorCodes.VolumeInUse or ErrorCodes.Fenced;

    /// <summary>Runs a step's work and turns its end, whatever it is, into the message the actor receives.</summary>
    /// <param name="killQemu">How the fault plan kills this step's QEMU (HSM steps); crash points are off outside tests.</param>
    public static async Task<StepFinished> RunAsync(OperationId operation, Func<Task<StepOutcome>> work, Action? killQemu = null)
    {
        try
        {
            FaultPlan.Current.Hit(operation.Step, FaultMoment.HostReceived, killQemu);
            var outcome = await work();
            FaultPlan.Current.Hit(operation.Step, FaultMoment.HostDone, killQemu);
            return new StepFinished(operation, new OperationSucceeded(operation, outcome));
        }
        catch (Exception e)
        {
            return new StepFinished(operation, Failed(operation, e));
        }
    }
}

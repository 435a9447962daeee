using Akka.Actor;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Spm;

/// <summary>
/// What a host actor remembers about operation ids (DESIGN §3): who waits for each running operation,
/// and the answers of recently finished ones, so a repeated id attaches or gets the same answer.
/// Bounded: the oldest answers are forgotten first; a forgotten id is redone, which the idempotent
/// ports turn into the same answer. Used by the SPM and the HSM actors; only touched from inside the actor.
/// </summary>
internal sealed class OperationLedger(int capacity = 1024)
{
    private readonly Dictionary<OperationId, List<IActorRef>> _running = new();
    private readonly Dictionary<OperationId, IHostReply> _finished = new();
    private readonly Queue<OperationId> _finishedOrder = new();

    public enum Admission { Start, Attached, AlreadyAnswered }

    /// <summary>Registers <paramref name="sender"/> for <paramref name="operation"/> and says whether the work must start.</summary>
    public Admission Admit(OperationId operation, IActorRef sender, out IHostReply? answer)
    {
        answer = null;
        if (_finished.TryGetValue(operation, out var done))
        {
            answer = done;
            return Admission.AlreadyAnswered;
        }
        if (_running.TryGetValue(operation, out var waiters))
        {
            if (!waiters.Contains(sender)) waiters.Add(sender);
            return Admission.Attached;
        }
        _running[operation] = [sender];
        return Admission.Start;
    }

    public bool IsRunning(OperationId operation) => _running.ContainsKey(operation);

    public IReadOnlyList<IActorRef> WaitersOf(OperationId operation) =>
        _running.TryGetValue(operation, out var waiters) ? waiters : [];

    public IEnumerable<OperationId> Running => _running.Keys;

    /// <summary>Records the answer and returns who waited for it; empty when the operation was not running (a late duplicate).</summary>
    public IReadOnlyList<IActorRef> Finish(OperationId operation, IHostReply answer)
    {
        if (!_running.Remove(operation, out var waiters)) return [];
        _finished[operation] = answer;
        _finishedOrder.Enqueue(operation);
        while (_finishedOrder.Count > capacity) _finished.Remove(_finishedOrder.Dequeue());
        return waiters;
    }
}

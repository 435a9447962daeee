using Akka.Actor;
using Akka.Event;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

/// <summary>How many migrations may run at once per host (of the VM) and per storage domain (source or destination); 0 = no limit.</summary>
public sealed record MigrationLimits(int PerHost, int PerDomain)
{
    public static readonly MigrationLimits Default = new(PerHost: 2, PerDomain: 4);
}

/// <summary>
/// The concurrency limits of issue 3: admits a migration at once unless its host or one of its domains
/// is at its limit; then it waits, in arrival order, until a running migration releases its slots.
/// Its state is only memory: after a restart, running migrations re-announce themselves
/// (<see cref="AdmissionHeld"/>) and queued ones ask again.
/// </summary>
public sealed class MigrationAdmission : ReceiveActor
{
    private sealed record Claim(MigrationId Migration, string? Host, ValueList<DomainId> Domains);
    private sealed record Waiting(Claim Claim, IActorRef ReplyTo);

    private readonly MigrationLimits _limits;
    private readonly Dictionary<MigrationId, Claim> _running = [];
    private readonly List<Waiting> _queue = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public static Props Props(MigrationLimits limits) => Akka.Actor.Props.Create(() => new MigrationAdmission(limits));

    public MigrationAdmission(MigrationLimits limits)
    {
        _limits = limits;
        Receive<AdmissionRequest>(r => Request(new Claim(r.Migration, r.Host, r.Domains), Sender));
        Receive<AdmissionHeld>(h =>
        {
            _queue.RemoveAll(w => w.Claim.Migration == h.Migration);
            _running[h.Migration] = new Claim(h.Migration, h.Host, h.Domains);
        });
        Receive<AdmissionReleased>(r =>
        {
            _queue.RemoveAll(w => w.Claim.Migration == r.Migration);
            if (_running.Remove(r.Migration))
                AdmitWaiting();
        });
    }

    private void Request(Claim claim, IActorRef replyTo)
    {
        if (_running.ContainsKey(claim.Migration))
        {
            replyTo.Tell(new AdmitMigration(claim.Migration)); // the first answer was lost: same answer
            return;
        }
        var index = _queue.FindIndex(w => w.Claim.Migration == claim.Migration);
        if (index >= 0)
        {
            _queue[index] = new Waiting(claim, replyTo); // the saga may have moved (recovery elsewhere)
            return;
        }
        if (Fits(claim))
            Admit(claim, replyTo);
        else
        {
            _queue.Add(new Waiting(claim, replyTo));
            _log.Info("Migration {Migration} waits as Queued: host {Host} or one of domains {Domains} is at its limit ({PerHost} per host, {PerDomain} per domain)",
                claim.Migration, claim.Host ?? "(unknown)", string.Join(",", claim.Domains), _limits.PerHost, _limits.PerDomain);
        }
    }

    private void AdmitWaiting()
    {
        foreach (var waiting in _queue.ToList())
            if (Fits(waiting.Claim))
            {
                _queue.Remove(waiting);
                Admit(waiting.Claim, waiting.ReplyTo);
            }
    }

    private void Admit(Claim claim, IActorRef replyTo)
    {
        _running[claim.Migration] = claim;
        replyTo.Tell(new AdmitMigration(claim.Migration));
    }

    private bool Fits(Claim claim)
    {
        if (_limits.PerHost > 0 && claim.Host is { } host && _running.Values.Count(c => c.Host == host) >= _limits.PerHost)
            return false;
        if (_limits.PerDomain > 0)
            foreach (var domain in claim.Domains)
                if (_running.Values.Count(c => c.Domains.Contains(domain)) >= _limits.PerDomain)
                    return false;
        return true;
    }
}

using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Migration;

/// <summary>Between a migration saga and the admission limits singleton, which may run on another coordinator.</summary>
public interface IAdmissionMessage;

/// <summary>A queued migration asks to run; answered with <see cref="AdmitMigration"/> when the limits allow it. Repeats are harmless.</summary>
public sealed record AdmissionRequest(MigrationId Migration, string? Host, ValueList<DomainId> Domains) : IAdmissionMessage;

/// <summary>A recovered migration that was admitted before: count it again, without asking.</summary>
public sealed record AdmissionHeld(MigrationId Migration, string? Host, ValueList<DomainId> Domains) : IAdmissionMessage;

/// <summary>
/// The admission limits started (anew: the singleton moved to another Coordinator, or its Coordinator started again) with
/// nothing counted: published on <see cref="Topic"/> to every Coordinator, whose sagas then say again what they hold
/// (<see cref="AdmissionHeld"/>) or ask again (queued).
/// </summary>
public sealed record AdmissionRestarted(DateTimeOffset At) : IAdmissionMessage
{
    public const string Topic = "migration-admission";
}

/// <summary>A migration finished: its slots are free.</summary>
public sealed record AdmissionReleased(MigrationId Migration) : IAdmissionMessage;

/// <summary>
/// The admission limits ask a migration whose slots a queued one waits for whether it still holds them (a release can be
/// lost): a finished one answers <see cref="AdmissionReleased"/>, a running one <see cref="AdmissionHeld"/>, a queued one
/// nothing (it asks again itself). Routed to the saga like a query, which wakes a passivated one.
/// </summary>
public sealed record AdmissionCheck(MigrationId MigrationId) : IMigrationQuery;

using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Migration;

/// <summary>Between a migration saga and the admission limits singleton, which may run on another coordinator.</summary>
public interface IAdmissionMessage;

/// <summary>A queued migration asks to run; answered with <see cref="AdmitMigration"/> when the limits allow it. Repeats are harmless.</summary>
public sealed record AdmissionRequest(MigrationId Migration, string? Host, ValueList<DomainId> Domains) : IAdmissionMessage;

/// <summary>A recovered migration that was admitted before: count it again, without asking.</summary>
public sealed record AdmissionHeld(MigrationId Migration, string? Host, ValueList<DomainId> Domains) : IAdmissionMessage;

/// <summary>A migration finished: its slots are free.</summary>
public sealed record AdmissionReleased(MigrationId Migration) : IAdmissionMessage;

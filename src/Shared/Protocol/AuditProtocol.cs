using LiveMigration.Shared.Migration;

namespace LiveMigration.Shared.Protocol;

/// <summary>What the API asks the audit trail (a persistent singleton over the coordinators) and what it answers.</summary>
public interface IAuditMessage;

/// <summary>The audit trail's journal events: a request recorded before it is carried out, and its outcome after.</summary>
public interface IAuditEvent;

/// <summary>
/// A request that changes something, as the API received it; recorded (journaled) before the API carries it out, so a
/// Coordinator that dies mid-request still leaves it in the trail. Answered with <see cref="AuditRecorded"/>.
/// </summary>
/// <param name="RequestId">Chosen by the API; a repeat of the same id is recorded once.</param>
/// <param name="Role">The role of the token that sent it: <c>operator</c>, <c>viewer</c>, or <c>no-token</c> (an API without tokens, loopback only).</param>
/// <param name="Body">At most <see cref="AuditLimits.MaxBodyChars"/> characters of the request body (never its headers, so never the token).</param>
public sealed record RecordAuditRequest(string RequestId, DateTimeOffset At, string Role, string Client, string Method, string Path,
    string Body, bool BodyTruncated) : IAuditMessage;

/// <summary>The answer the API gave to a recorded request: its status code and, for a refusal, the error code of its JSON.</summary>
public sealed record RecordAuditOutcome(string RequestId, DateTimeOffset At, int Status, string? ErrorCode) : IAuditMessage;

/// <summary>The trail's receipt: the request or outcome is in the journal.</summary>
public sealed record AuditRecorded(string RequestId) : IAuditMessage;

/// <summary>
/// A page of the trail, newest first: entries requested at or after <paramref name="Since"/>, with a number below
/// <paramref name="Before"/> (the <c>next</c> of the page before), at most <paramref name="Limit"/>.
/// </summary>
public sealed record GetAuditEntries(DateTimeOffset? Since, long? Before, int Limit) : IAuditMessage;

/// <summary>One recorded request; <paramref name="Number"/> counts the trail's requests from 1 and is the paging cursor.</summary>
/// <param name="Status">Null while (or when) no outcome was recorded: still running, or the Coordinator died before it answered.</param>
public sealed record AuditEntry(long Number, string RequestId, DateTimeOffset At, string Role, string Client, string Method, string Path,
    string Body, bool BodyTruncated, DateTimeOffset? AnsweredAt, int? Status, string? ErrorCode);

/// <param name="Next">The <c>before</c> of the next (older) page, or null when this page reaches the oldest entry kept.</param>
public sealed record AuditEntries(ValueList<AuditEntry> Entries, long? Next) : IAuditMessage;

/// <summary>The trail's snapshot in the snapshot store: the number of the last request and the entries kept in memory, oldest first.</summary>
public sealed record AuditSnapshot(long LastNumber, ValueList<AuditEntry> Entries) : IAuditMessage;

public sealed record AuditRequestRecorded(string RequestId, DateTimeOffset At, string Role, string Client, string Method, string Path,
    string Body, bool BodyTruncated) : IAuditEvent;

public sealed record AuditOutcomeRecorded(string RequestId, DateTimeOffset At, int Status, string? ErrorCode) : IAuditEvent;

public static class AuditLimits
{
    /// <summary>Enough for any command the API takes (a migration of a few disks); a bigger body is kept cut, and says so.</summary>
    public const int MaxBodyChars = 4096;
}
